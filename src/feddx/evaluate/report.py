"""Write an :class:`~feddx.evaluate.harness.EvaluationResult` as JSON and as an HTML report.

The HTML file is self-contained (plots are PNGs embedded as base64, rendered with
matplotlib's Agg backend, no JavaScript, no external assets), so it can be attached to a ticket
or opened on an air-gapped hospital machine. It shows the LLM-vs-baseline table, the confusion
matrix, per-group accuracy and the calibration curve. Every text is HTML-escaped; only
aggregates and diagnosis names appear. :func:`write_predictions` adds one JSON line per case
(case id, reference, every candidate's probability) for error analysis; it holds keyed
pseudonyms of the case ids, never findings or text. Every writer is atomic (temp file + rename).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from feddx.data.stage import DeidStage, write_marker
from feddx.evaluate.harness import EvaluationResult, ModelMetrics
from feddx.io import atomic_write_text


def write_json(result: EvaluationResult, path: Path) -> None:
    """Write ``result.to_json()`` (indented) to ``path`` atomically."""
    atomic_write_text(path, result.to_json(indent=1) + "\n")


def write_predictions(
    result: EvaluationResult, path: Path, *, stage: DeidStage | None = None
) -> Path:
    """Write the per-case rankings (:func:`feddx.evaluate.harness.case_rows`) as JSON lines to
    ``path`` atomically, and the de-identification marker beside it (``PATH.deid.json``);
    returns the marker's path.

    Case ids are written as keyed pseudonyms (:meth:`feddx.data.stage.DeidStage.case_id`;
    ``stage`` defaults to a fresh stage, which pseudonymizes ids without loading any text
    analysis): the same ids ``feddx data prepare`` gives these cases with the same
    ``FEDDX_DEID_KEY``, and ids that are already such pseudonyms stay as they are. A stage with
    ``assume_deidentified=True`` writes the ids as they are (recorded as ``"assumed"``).
    """
    stage = stage if stage is not None else DeidStage()
    rows = [{**row, "case_id": stage.case_id(str(row["case_id"]))} for row in result.cases]
    atomic_write_text(path, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    return write_marker(path, stage.marker(text=False), extra={"n_cases": len(rows)})


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_plot(m: ModelMetrics, title: str) -> str:
    plt = _pyplot()
    labels, matrix = m.confusion_labels, m.confusion_matrix
    size = min(4 + 0.22 * len(labels), 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("reference")
    ax.set_title(title)
    if len(labels) <= 12:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    return _png(fig)


def groups_figure(result: EvaluationResult) -> Any:
    """Top-1 per group as horizontal bars, one panel per attribute: the group names (long
    institution slugs such as ``hungarian-inst-of-cardiology``) sit on the y-axis, one per
    line, where side by side on an x-axis they ran into each other."""
    plt = _pyplot()
    attrs = list(result.llm.groups)
    sizes = [max(1, len(result.llm.groups[a])) for a in attrs]
    fig, axes = plt.subplots(
        len(attrs),
        1,
        figsize=(7.5, 0.9 * len(attrs) + 0.32 * sum(sizes)),
        squeeze=False,
        gridspec_kw={"height_ratios": [n + 1.5 for n in sizes]},
    )
    height = 0.4 if result.baseline else 0.8
    shift = height / 2 if result.baseline else 0.0
    for ax, attr in zip(axes[:, 0], attrs, strict=True):
        values = list(result.llm.groups[attr])
        ys = range(len(values))
        llm = [result.llm.groups[attr][v]["top1"] for v in values]
        ax.barh([y - shift for y in ys], llm, height, label="LLM")
        if result.baseline:
            base = [result.baseline.groups[attr].get(v, {}).get("top1", 0.0) for v in values]
            ax.barh([y + shift for y in ys], base, height, label="baseline")
        ns = [result.llm.groups[attr][v]["n"] for v in values]
        ax.set_yticks(list(ys), [f"{v} (n={n})" for v, n in zip(values, ns, strict=True)])
        ax.tick_params(axis="y", labelsize=8)
        ax.invert_yaxis()  # the first group on top, as in a table
        ax.set_xlim(0, 1.05)
        ax.set_title(f"top-1 by {attr}", fontsize=10, loc="left")
    axes[-1][0].set_xlabel("top-1 accuracy")
    axes[0][0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the bars
    fig.tight_layout()
    return fig


def groups_plot(result: EvaluationResult) -> str:
    return _png(groups_figure(result))


def calibration_plot(result: EvaluationResult) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
    curves = [
        (
            f"LLM, T=1 (ECE {result.temperature['ece_before']:.3f})",
            result.temperature.get("reliability_before", []),
        ),
        (
            f"LLM, T={result.temperature.get('value', 1.0):.2f} "
            f"(ECE {result.temperature['ece_after']:.3f})",
            result.llm.calibration["reliability"],
        ),
    ]
    if result.baseline:
        curves.append(
            (
                f"baseline (ECE {result.baseline.calibration['ece']:.3f})",
                result.baseline.calibration["reliability"],
            )
        )
    for label, bins in curves:
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("top-1 accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Reliability")
    return _png(fig)


_ROWS: list[tuple[str, str, str]] = [
    ("summary", "top1", "top-1"),
    ("summary", "top3", "top-3"),
    ("summary", "top5", "top-5"),
    ("summary", "macro_f1", "macro-F1"),
    ("summary", "balanced_accuracy", "balanced accuracy"),
    ("calibration", "ece", "ECE"),
    ("differential", "gtpa@1", "GTPA@1"),
    ("differential", "ddr", "DDR"),
    ("differential", "ddp", "DDP"),
    ("differential", "ddf1", "DDF1"),
    ("hierarchy", "chapter_f1", "ICD-10 chapter F1"),
    ("hierarchy", "block_f1", "ICD-10 block F1"),
    ("hierarchy", "category_f1", "ICD-10 category F1"),
    ("hierarchy", "hierarchical_f1", "hierarchical F1"),
    ("summary", "latency_ms_p50", "latency p50 (ms/case)"),
    ("summary", "latency_ms_p95", "latency p95 (ms/case)"),
]


def _ms(value: float) -> str:
    """A latency with the digits it needs: a linear model's few microseconds per case must
    not print as a false "0"; a time that was never measured (0 or below) says so."""
    if value <= 0:
        return "not measured"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _cell(m: ModelMetrics | None, section: str, key: str) -> str:
    if m is None:
        return "—"
    table = getattr(m, section)
    value = table.get(key) if isinstance(table, dict) else None
    if value is None:
        return "—"
    return _ms(float(value)) if key.startswith("latency") else f"{value:.3f}"


def comparison_table(result: EvaluationResult) -> str:
    head = "<tr><th>metric</th><th>LLM</th><th>baseline</th></tr>"
    rows = []
    for section, key, label in _ROWS:
        llm = _cell(result.llm, section, key)
        base = _cell(result.baseline, section, key)
        if llm == "—" and base == "—":
            continue
        if key.startswith("latency") and base not in ("—", "not measured"):
            base += "*"
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{llm}</td><td>{base}</td></tr>")
    note = (
        "<p class='note'>* the baseline scores every case in one batched call: its latency is "
        "that call's time divided by the number of cases (so p50 = p95); the LLM's is measured "
        "case by case.</p>"
        if result.baseline
        else ""
    )
    return f"<table>{head}{''.join(rows)}</table>{note}"


_CALIBRATION_METHODS = {
    "validation": "fitted on the validation cases",
    "cross-fit": "cross-fitted: each half of the cases with the temperature of the other half",
    "fixed": "given (--temperature)",
    "none": "not fitted (T = 1)",
}


def calibration_table(result: EvaluationResult) -> str:
    """Temperature and ECE per model, each row and column named (the raw dict printed a bare
    ``value`` row: the temperature, unnamed)."""
    t = result.temperature
    method = str(t.get("method", "none"))
    how = _CALIBRATION_METHODS.get(method, method)
    if t.get("n_validation"):
        how += f" ({t['n_validation']} cases)"
    value = t.get("value")
    temp = f"{value:.3g}" if isinstance(value, int | float) else "—"
    rows = [
        ("LLM, raw scores", "1", _num(t.get("ece_before"))),
        (f"LLM, calibrated ({how})", temp, _num(t.get("ece_after"))),
    ]
    if result.baseline:
        rows.append(
            ("baseline (its own probabilities)", "—", _num(result.baseline.calibration.get("ece")))
        )
    head = "<tr><th>model</th><th>softmax temperature</th><th>ECE (top-1)</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows
    )
    folds = t.get("fold_values")
    note = (
        "<p class='note'>Temperatures of the two halves: "
        + ", ".join(f"{v:.3g}" for v in folds)
        + "; the one above is fitted on all cases, for use on new ones.</p>"
        if method == "cross-fit" and folds
        else ""
    )
    return f"<table>{head}{body}</table>{note}"


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "—"


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in data.items()
        if not isinstance(v, list | dict)
    )
    return f"<table>{rows}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_html(result: EvaluationResult, title: str = "feddx evaluation") -> str:
    """The report as one self-contained HTML string."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:.25em .6em;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}.note{font-size:.85em;color:#555}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{result.n} cases, {len(result.candidates)} candidates, scoring "
        f"<b>{html.escape(result.scoring_method)}</b>, {result.seconds:.1f} s.</p>",
    ]
    if result.meta:
        parts += ["<h2>Run</h2>", _kv_table(result.meta)]
    parts += ["<h2>LLM vs baseline</h2>", comparison_table(result)]
    parts += ["<h2>Calibration</h2>", calibration_table(result)]
    parts.append(f"<img alt='calibration curve' src='{calibration_plot(result)}'>")
    if result.generation:
        parts += ["<h2>Free generation vs reference diagnosis</h2>", _kv_table(result.generation)]
    parts += [
        "<h2>Per-group top-1</h2>",
        f"<img alt='per-group accuracy' src='{groups_plot(result)}'>",
    ]
    parts += [
        "<h2>Confusion matrix</h2>",
        f"<img alt='LLM confusion matrix' src='{confusion_plot(result.llm, 'LLM')}'>",
    ]
    if result.baseline:
        parts.append(
            f"<img alt='baseline confusion matrix' "
            f"src='{confusion_plot(result.baseline, 'baseline')}'>"
        )
    if result.notes:
        parts += ["<h2>Notes</h2><ul>"]
        parts += [f"<li>{html.escape(n)}</li>" for n in result.notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(result: EvaluationResult, path: Path, title: str = "feddx evaluation") -> None:
    """Render the report and write it to ``path`` atomically."""
    atomic_write_text(path, render_html(result, title))
