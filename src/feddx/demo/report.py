"""The demo's report: one self-contained HTML page built from the run folder's ``results.json``.

Every number on the page is read from the run's record, nothing is recomputed or typed in, so
``feddx report RUN_DIR`` rebuilds the same page from the folder alone. Plots are PNGs embedded
as base64 ``data:`` URIs: the page needs no network and no script, and can be mailed or
archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from feddx.demo.runfolder import RunFolder
from feddx.errors import DataError
from feddx.io import atomic_write_text

REPORT_FILE = "report.html"
SCORED = ("zero-shot", "baseline", "centralized", "federated", "personalized")
LABELS = {
    "zero-shot": "zero-shot LLM",
    "baseline": "logistic regression",
    "centralized": "centralized LoRA",
    "federated": "federated LoRA",
    "personalized": "personalized LoRA",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#1d2733;line-height:1.45}
h1{margin-bottom:0}h2{border-bottom:1px solid #d5dbe3;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #d5dbe3;padding:4px 10px;
text-align:right}th{background:#eef2f6}td:first-child,th:first-child{text-align:left}
.sub{color:#5b6b7c}.verdict{background:#f4f8ec;border-left:4px solid #7aa33a;padding:6px 12px}
.warn{background:#fdf3e7;border-left-color:#d98a1f}code{background:#eef2f6;padding:1px 4px}
img{max-width:100%;border:1px solid #e3e8ee}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def _rounds_plot(fed: Mapping[str, Any], central: Mapping[str, Any] | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in fed.get("rounds", []) if r.get("round") and r.get("top1") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(
        [r["round"] for r in rounds],
        [r["top1"] for r in rounds],
        "o-",
        label=(f"federated global adapter, {fed.get('round_eval_cases')} validation cases"),
    )
    chosen = fed.get("rounds_chosen", rounds[-1]["round"] if rounds else None)
    if chosen is not None:
        ax.plot(
            [chosen],
            [fed["top1"]],
            "D",
            color="C0",
            mfc="white",
            label=f"round chosen on validation, all {fed['n']} test cases",
        )
    if central:
        ax.axhline(
            central["top1"],
            color="C1",
            ls="--",
            label=f"centralized LoRA ({central.get('epochs')} epochs, all test cases)",
        )
    ax.set_xlabel("federated round")
    ax.set_xticks([r["round"] for r in rounds])
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _hospital_plot(rows: Sequence[Mapping[str, Any]], before: str, after: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if r.get(before) is not None]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    w = 0.27
    ax.bar(
        x - w, [1 - r["majority_rate"] for r in rows], w, label="majority class", color="#b8c2cc"
    )
    ax.bar(x, [1 - r[before] for r in rows], w, label=LABELS[before], color="C0")
    if after != before and any(r.get(after) is not None for r in rows):
        ax.bar(x + w, [1 - (r.get(after) or 0) for r in rows], w, label=LABELS[after], color="C2")
    # long hospital names wrap at 18 characters so neighbouring labels do not overlap
    labels = [f"{textwrap.fill(r['hospital'], 18)}\n(n={r['n']})" for r in rows]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("top-1 error")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _bars_plot(labels: Sequence[str], values: Sequence[float], xlabel: str, log: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.0))
    ax.barh(list(labels), list(values), color="C0")
    if log:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
    return _png(fig)


def _region_errors(results: Mapping[str, Any]) -> list[str]:
    """Per-region error analysis: the test error (1 - top-1) of each region (its hospitals'
    cases pooled) and hospital before personalization (the parent stage: the global adapter)
    and after (each hospital answered by the adapter the gate left: regional, institutional or
    still the parent), with the counts it is made of. The counts come from the per-hospital
    top-1 and n of ``results.json`` (wrong = (1 - top-1) x n, an integer)."""
    stages: Mapping[str, Any] = results.get("stages", {})
    pers = stages.get("personalized")
    rows = [r for r in results.get("per_hospital") or [] if r["hospital"] != "all"]
    if not pers or not rows:
        return []
    regions = ((stages.get("data") or {}).get("partition") or {}).get("regions", {})
    before, answering = pers["parent"], pers.get("answering", {})

    by_region: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_region.setdefault(regions.get(r["hospital"], "(none)"), []).append(r)
    table, pooled = [], []
    for region, members in sorted(by_region.items()):
        table.append(_error_cells(f"region {region}", members, before, ""))
        pooled.append((region, members))
        for m in members:
            level = answering.get(m["hospital"], before).split("/")[0]
            table.append(_error_cells(f"↳ {m['hospital']}", [m], before, level))
    head = ["region / hospital", "n", f"error, {LABELS[before]}", "error, personalized"]
    parts = [
        "<h2>Error by region and hospital</h2>",
        "<p>Test error (1 - top-1, wrong/n) before personalization (the "
        f"{html.escape(LABELS[before])} adapter) and after (each hospital answered by the "
        "adapter the gate left it); change in points, negative = fewer errors; a region pools "
        "its hospitals' cases.</p>",
        _table([*head, "change", "answered by"], table),
    ]
    plot = _region_plot(pooled, before)
    parts.append(f"<img alt='error per region' src='{plot}'>")
    return parts


def _wrong(members: Sequence[Mapping[str, Any]], stage: str) -> int | None:
    """Test cases ``stage`` got wrong over ``members`` (per-hospital rows), ``None`` when one
    has no figure for it."""
    if any(m.get(stage) is None for m in members):
        return None
    return sum(round((1 - float(m[stage])) * int(m["n"])) for m in members)


def _error_cells(
    label: str, members: Sequence[Mapping[str, Any]], before: str, by: str
) -> list[str]:
    """One row of the region table: n, error (wrong/n) before and after, change, answered by."""
    n = sum(m["n"] for m in members)
    wb, wa = _wrong(members, before), _wrong(members, "personalized")
    out = [label, str(n)]
    out += ["-" if w is None else f"{w / n:.3f} ({w}/{n})" for w in (wb, wa)]
    out.append("-" if wb is None or wa is None else f"{100 * (wa - wb) / n:+.1f}")
    return [*out, by]


def _region_plot(pooled: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], before: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(pooled))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    w = 0.38
    for offset, stage, colour in ((-w / 2, before, "C0"), (w / 2, "personalized", "C2")):
        counts = [_wrong(members, stage) for _, members in pooled]
        ns = [sum(m["n"] for m in members) for _, members in pooled]
        ys = [0.0 if c is None else c / n for c, n in zip(counts, ns, strict=True)]
        bars = ax.bar(x + offset, ys, w, label=LABELS[stage], color=colour)
        ax.bar_label(
            bars,
            [f"{c}/{n}" if c is not None else "" for c, n in zip(counts, ns, strict=True)],
            fontsize=7,
        )
    labels = [f"{textwrap.fill(r, 18)}\n(n={sum(m['n'] for m in ms)})" for r, ms in pooled]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("top-1 error")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def render_report(results: Mapping[str, Any]) -> str:
    """The page for one run's ``results.json`` content."""
    stages: Mapping[str, Any] = results.get("stages", {})
    data = stages.get("data") or {}
    ev = stages.get("evaluation") or {}
    binary = ev.get("binary", {})
    cfg = results.get("config") or {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>feddx demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>feddx demo report</h1>",
        f"<p class='sub'>model {html.escape(str(cfg.get('model', '?')))}, data "
        f"{html.escape(str(cfg.get('dataset', '?')))}, seed {cfg.get('seed')}; every number "
        "below is read from this run's <code>results.json</code>.</p>",
        "<p class='sub'>Where only a language model can win: <code>feddx demo --story "
        "crosslingual</code> federates three English clinics with a Portuguese one "
        "(<code>results/crosslingual.md</code>).</p>",
    ]
    for line in ev.get("verdicts", []):
        warn = " warn" if ("NOT" in line or "MORE" in line or "behind" in line) else ""
        parts.append(f"<p class='verdict{warn}'>{html.escape(line)}</p>")
    skipped: Mapping[str, str] = results.get("skipped") or {}
    if skipped:
        parts.append("<h2>Stages skipped</h2><ul>")
        parts += [f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items()]
        parts.append("</ul>")

    if data:
        part = data.get("partition", {})
        parts.append("<h2>Data and partition</h2>")
        parts.append(
            f"<p>{data['n_cases']} {html.escape(data['source'])} cases: {data['n_train']} train, "
            f"{data['n_test']} test ({html.escape(data['split'])}). "
            f"{html.escape(data['partition_note'])}. Majority class "
            f"<em>{html.escape(data['majority_class'])}</em>: {data['majority_rate']:.3f} of the "
            "test cases.</p>"
        )
        names = sorted(set(part.get("train", {})) | set(part.get("test", {})))
        parts.append(
            _table(
                ["client / hospital", "region", "train cases", "test cases"],
                [
                    [
                        n,
                        part.get("regions", {}).get(n, "-"),
                        str(part.get("train", {}).get(n, 0)),
                        str(part.get("test", {}).get(n, 0)),
                    ]
                    for n in names
                ],
            )
        )

    scored = [s for s in SCORED if stages.get(s)]
    if scored:
        parts.append("<h2>Every stage on the test split</h2>")
        head = ["stage", "n", "top-1", "top-3", "macro-F1", "balanced acc.", "ECE"]
        if binary:
            head.append("disease yes/no acc.")
        rows = []
        for s in scored:
            e = stages[s]
            row = [
                LABELS[s],
                str(e["n"]),
                _fmt(e["top1"]),
                _fmt(e["top3"]),
                _fmt(e["macro_f1"]),
                _fmt(e.get("balanced_accuracy")),
                _fmt(e["ece"]),
            ]
            if binary:
                row.append(_fmt((binary.get(s) or {}).get("accuracy")))
            rows.append(row)
        parts.append(_table(head, rows))
        parts.append(
            "<p class='sub'>ECE after a cross-fitted temperature (each half of the test cases "
            "calibrated on the other half); the logistic regression is uncalibrated. "
            + (
                "Disease yes/no: the 5 grades collapsed to grade 0 against 1-4 from the same "
                "predictions (P(disease) = the sum of the 4 disease grades' probabilities, "
                "positive above 0.5), the task the UCI Heart literature reports (0.80-0.85)."
                if binary
                else ""
            )
            + "</p>"
        )

    per_hospital = results.get("per_hospital") or []
    if per_hospital:
        parts.append("<h2>Per hospital (top-1)</h2>")
        cols = [s for s in SCORED if any(r.get(s) is not None for r in per_hospital)]
        parts.append(
            _table(
                ["hospital", "n", "majority class", *(LABELS[c] for c in cols)],
                [
                    [
                        r["hospital"],
                        str(r["n"]),
                        _fmt(r["majority_rate"]),
                        *(_fmt(r.get(c)) for c in cols),
                    ]
                    for r in per_hospital
                ],
            )
        )
        if "federated" in cols:
            after = "personalized" if "personalized" in cols else "federated"
            parts.append("<p>Top-1 error per hospital, before and after personalization:</p>")
            parts.append(
                f"<img alt='per-hospital error' src='{_hospital_plot(per_hospital[1:] or per_hospital, 'federated', after)}'>"
            )

    parts += _region_errors(results)

    fed = stages.get("federated")
    if fed:
        parts.append("<h2>Federated rounds</h2>")
        parts.append(
            f"<p>{fed['clients']} Flower SuperNodes, {html.escape(fed['budget'])}; learning "
            f"rate {fed['learning_rate']} with {html.escape(fed['lr_schedule'])}.</p>"
        )
        parts.append(
            f"<img alt='accuracy per round' src='{_rounds_plot(fed, stages.get('centralized'))}'>"
        )
        parts.append(
            _table(
                [
                    "round",
                    "top-1 (validation)",
                    "clients' train loss",
                    "bytes sent",
                    "bytes received",
                ],
                [
                    [
                        str(r["round"]),
                        _fmt(r.get("top1")),
                        _fmt(r.get("train_loss")),
                        f"{r.get('bytes_sent', 0):,}",
                        f"{r.get('bytes_received', 0):,}",
                    ]
                    for r in fed.get("rounds", [])
                    if r.get("round")
                ],
            )
        )
        moved = fed["bytes_sent"] + fed["bytes_received"]
        completed = [r for r in fed.get("rounds", []) if (r.get("round") or 0) >= 1]
        # the full model down and up, every client, every completed round
        full = fed["full_model_bytes"] * 2 * fed["clients"] * len(completed)
        parts.append("<h2>Bytes exchanged</h2>")
        parts.append(
            f"<p>Adapters only: {moved / 2**20:,.1f} MiB over the whole federation "
            f"({fed['bytes_per_update'] / 2**10:,.0f} KiB per client update). Sending the full "
            f"model ({fed['full_model_params'] / 1e6:.1f}M parameters, float32, the tied "
            f"embedding counted once) both ways, every client, every round: "
            f"{full / 2**30:,.2f} GiB, {full / max(moved, 1):,.0f}x more.</p>"
        )
        parts.append(
            "<img alt='bytes' src='"
            + _bars_plot(
                ["adapters (this run)", "full model (same rounds)"],
                [moved / 2**20, full / 2**20],
                "MiB exchanged (log scale)",
                log=True,
            )
            + "'>"
        )
        parts.append("<h2>Privacy</h2>")
        if fed.get("epsilon") is not None:
            parts.append(
                f"<p>Differential privacy ({html.escape(str(fed.get('dp')))}): epsilon {fed['epsilon']:.2f} spent.</p>"
            )
        else:
            parts.append(
                "<p>Differential privacy was off in this run: no privacy budget was spent and "
                "none is claimed. Patient data never left a hospital's SuperNode; only adapter "
                "weights did (<code>feddx federate</code> with <code>dp</code> = central or "
                "local adds DP and reports epsilon).</p>"
            )

    pers = stages.get("personalized")
    if pers:
        parts.append("<h2>Personalization</h2>")
        parts.append(
            f"<p>From the {html.escape(pers['parent'])} adapter, {pers['epochs']} epoch(s) of "
            "fine-tuning per region, then per institution where a region has several; each "
            "hospital is answered by its most specific adapter that passed the gate: "
            f"{html.escape(str(pers.get('gate_rule', '')))}. "
            f"{html.escape(pers['individual'])}.</p>"
        )
        parts.append(
            _table(
                ["adapter", "level", "training cases", "answers", "gate (validation)"],
                [
                    [
                        k,
                        v["level"],
                        str(v["n_train"]),
                        "yes" if v.get("registered", True) else "no: its parent does",
                        str((v.get("gate") or {}).get("reason", "-")),
                    ]
                    for k, v in pers.get("adapters", {}).items()
                ],
            )
        )

    timed = [(s, e["seconds"]) for s, e in stages.items() if isinstance(e, dict) and "seconds" in e]
    if timed:
        parts.append("<h2>Time per stage</h2>")
        parts.append(
            "<img alt='time per stage' src='"
            + _bars_plot(
                [s for s, _ in timed],
                [t for _, t in timed],
                "seconds (this run; a skipped stage keeps the time of the run that finished it)",
                log=False,
            )
            + "'>"
        )
        parts.append(f"<p class='sub'>total {sum(t for _, t in timed):,.0f} s of stage time.</p>")

    serve = stages.get("serve")
    if serve:
        parts.append("<h2>Serve these adapters</h2>")
        parts.append(
            f"<p>{len(serve['adapters'])} adapters registered ({html.escape(', '.join(serve['adapters']))}):</p>"
            + (
                f"<p>An API key for a hospital (printed once, only its hash is stored):</p>"
                f"<pre><code>{html.escape(serve['key_command'])}</code></pre>"
                if serve.get("key_command")
                else ""
            )
            + "<p>The service:</p>"
            + f"<pre><code>{html.escape(serve['command'])}</code></pre>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: Path) -> Path:
    """(Re)build ``run_dir/report.html`` from ``run_dir/results.json`` alone; returns its
    path. Raises :class:`DataError` naming the folder when it holds no demo results."""
    folder = RunFolder(run_dir)
    if not folder.results_path.is_file():
        raise DataError(f"{run_dir}: no {folder.results_path.name}: not a feddx demo run folder")
    if not folder.results.get("stages"):
        raise DataError(f"{folder.results_path}: no finished stage to report")
    path = folder.root / REPORT_FILE
    atomic_write_text(path, render_report(folder.results))
    return path
