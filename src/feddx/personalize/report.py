"""The run's outputs: the table of every column (adapter level and method) per group (all,
each region, its institutions) on the test split, and what it is written as: ``table.md``,
``table.json`` and ``per_group.png``.

A column's cell for a region or ``all`` pools the predictions of its institutions, each scored
by its own adapter of that column, so "institutional" means every hospital answered by its
own adapter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feddx.data.candidates import CandidateList
from feddx.model.predict import Prediction
from feddx.personalize.choose import Choice
from feddx.personalize.columns import INDIVIDUAL, SELECTED, column_key, scopes, table_columns
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.error_analysis import (
    ERROR_PLOT_FILE,
    error_by_group,
    plot_errors,
    render_errors,
)
from feddx.personalize.gate import GATE_RULE
from feddx.personalize.group_bars import BarSeries, plot_group_bars
from feddx.personalize.groups import Groups
from feddx.personalize.levels import Hierarchy, Individual
from feddx.personalize.scoring import Preds, group_metrics

TABLE_MD, TABLE_JSON, PLOT_FILE = "table.md", "table.json", "per_group.png"
_COLOUR_CYCLE = 10


def table_rows(
    config: PersonalizeConfig,
    groups: Groups,
    hierarchy: Hierarchy,
    choice: Choice,
    test_preds: Preds,
) -> list[dict[str, Any]]:
    """One row per scope (:func:`scopes`): kind, group, test cases ``n``, region, and per
    column the metrics (:func:`~feddx.personalize.scoring.group_metrics`) of the pooled
    test predictions, ``None`` where no institution has that column's adapter."""
    rows = []
    for kind, name, members in scopes(groups):
        row: dict[str, Any] = {
            "kind": kind,
            "group": name,
            "n": sum(len(i.test) for i in members),
            "region": members[0].region if kind != "all" else None,
        }
        for column in table_columns(config):
            preds: list[Prediction] = []
            for inst in members:
                key = column_key(column, inst, config, hierarchy, choice)
                if key is not None:
                    preds.extend(test_preds[inst.name][key])
            row[column] = group_metrics(preds) if preds else None
        rows.append(row)
    return rows


def _summary(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], regions: dict[str, Any]
) -> dict[str, Any]:
    """Mean per-region and per-institution top-1 by column, and each column's gain over global."""
    out: dict[str, Any] = {}
    for kind in ("region", "institution"):
        sel = [r for r in rows if r["kind"] == kind]
        means = {}
        for c in columns:
            vals = [r[c]["top1"] for r in sel if r[c] is not None]
            if vals:
                means[c] = sum(vals) / len(vals)
        out[f"mean_{kind}_top1"] = means
        if "global" in means:
            out[f"mean_{kind}_top1_gain"] = {c: v - means["global"] for c, v in means.items()}
    return out


def build_result(
    config: PersonalizeConfig,
    loaded: Any,
    candidates: CandidateList,
    groups: Groups,
    hierarchy: Hierarchy,
    scores: Preds,
    choice: Choice,
    individual: Individual | None,
    started: float,
) -> dict[str, Any]:
    """The ``table.json`` content (before registration fills ``adapters``): config, data,
    groups, the table's rows and summary, every choice made on validation, the gate's
    decisions and the individual level's per-institution figures. ``scores``: the test
    predictions per institution and adapter key (the individual column's under
    :data:`INDIVIDUAL`)."""
    columns = table_columns(config)
    rows = table_rows(config, groups, hierarchy, choice, scores)
    insts = groups.institutions
    return {
        "config": config.to_dict(),
        "data": loaded.spec,
        "source": loaded.source,
        "candidates": len(candidates.names),
        "groups": [
            {
                "region": i.region,
                "institution": i.name,
                "train": len(i.train),
                "validation": len(i.validation),
                "test": len(i.test),
            }
            for i in insts
        ],
        "notes": groups.notes,
        "columns": columns,
        "rows": rows,
        "summary": _summary(rows, columns, groups.regions()),
        "regional_validation": choice.regional_validation,
        "regional_default": choice.default_regional,
        "selected_on_validation": choice.selected,
        "method_validation": choice.method_validation,
        "default_method": choice.default_method,
        "gate": {
            "rule": GATE_RULE,
            "decisions": {k: d.to_dict() for k, d in choice.gates.items()},
            "answering": choice.deployed,
        },
        "ditto_mu": {
            name: by_method["ditto"].extra.get("mu")
            for name, by_method in hierarchy.institutional.items()
            if "ditto" in by_method
        },
        "adapters": [],
        "seconds": time.perf_counter() - started,
        "individual_context": _individual_summary(individual, choice.default_method),
        "error_by_group": error_by_group(config, groups, hierarchy, choice, scores),
    }


def _individual_summary(individual: Individual | None, default_method: str) -> Any:
    """The ``individual_context`` entry: per institution, the adapter, prior weight and
    indexed cases; a plain string when the level is off."""
    if individual is None:
        return "off (individual: false)"
    return {
        "column": INDIVIDUAL,
        "per_institution": individual.summary,
        "note": "the adapter the gate leaves answering each institution (its "
        f"{default_method} adapter where that passed) plus the institutional retrieval prior "
        "(its own past cases' diagnoses; weight chosen "
        "on its validation cases); patient history is in every column's prompt; history "
        "order and few-shot context: benchmarks/bench_individual.py",
    }


def _fmt(m: dict[str, float] | None) -> str:
    return "—" if m is None else f"{m['top1']:.3f} / {m['top3']:.3f} / {m['macro_f1']:.3f}"


def render_table(result: dict[str, Any]) -> str:
    """``table.md``: one row per group (all, each region, its institutions), one column per
    adapter level and method, each cell ``top-1 / top-3 / macro-F1`` on the test split; then
    the summary, what was chosen on validation and the groups' sizes."""
    columns = result["columns"]
    lines = [
        f"# Personalization on {result['source']} ({result['candidates']} candidates)",
        "",
        "Test split; each cell is top-1 / top-3 / macro-F1. Institutional columns score each "
        "institution with its own adapter; region and `all` rows pool those predictions.",
        "",
        "| group | n | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for r in result["rows"]:
        name = {"all": "**all**", "region": f"**{r['group']}**"}.get(
            r["kind"], f"&nbsp;&nbsp;{r['group']}"
        )
        lines.append(f"| {name} | {r['n']} | " + " | ".join(_fmt(r[c]) for c in columns) + " |")
    s = result["summary"]
    lines += ["", "Mean top-1 over groups (gain over global):", ""]
    for kind in ("region", "institution"):
        means, gains = s.get(f"mean_{kind}_top1", {}), s.get(f"mean_{kind}_top1_gain", {})
        cells = ", ".join(f"{c} {means[c]:.3f} ({gains.get(c, 0.0):+.3f})" for c in means)
        lines.append(f"- per {kind}: {cells}")
    lines += _choice_lines(result)
    lines.append("")
    lines.append("| region | institution | train | validation | test |")
    lines.append("|---|---|---:|---:|---:|")
    for g in result["groups"]:
        lines.append(
            f"| {g['region']} | {g['institution']} | {g['train']} | {g['validation']} | {g['test']} |"
        )
    if result.get("error_by_group"):
        lines += render_errors(result["error_by_group"])
    return "\n".join(lines) + "\n"


def _choice_lines(result: dict[str, Any]) -> list[str]:
    """The table's notes: what was chosen on validation, the gate, data notes, the
    individual level."""
    lines = [
        f"- regional default: {result['regional_default']} (validation: "
        + ", ".join(f"{m} top-1 {v['top1']:.3f}" for m, v in result["regional_validation"].items())
        + ")"
    ]
    if result.get("selected_on_validation"):
        lines.append(
            f"- {SELECTED}: "
            + ", ".join(f"{k} -> {v}" for k, v in result["selected_on_validation"].items())
        )
    if result.get("method_validation"):
        lines.append(
            f"- default institutional method (registered where it passes the gate): "
            f"{result['default_method']} "
            "(pooled validation top-1: "
            + ", ".join(f"{m} {v['top1']:.3f}" for m, v in result["method_validation"].items())
            + ")"
        )
    if result.get("gate"):
        lines.append(f"- gate: {result['gate']['rule']}")
        lines += [f"  - {d['reason']}" for d in result["gate"]["decisions"].values()]
    if result.get("ditto_mu"):
        lines.append(
            "- Ditto mu chosen on validation: "
            + ", ".join(f"{k} {v:g}" for k, v in result["ditto_mu"].items())
        )
    for note in result["notes"]:
        lines.append(f"- {note}")
    ind = result["individual_context"]
    if isinstance(ind, dict):
        lines.append(
            f"- {INDIVIDUAL}: {ind['note']}; prior weight per institution: "
            + ", ".join(f"{k} {v['prior_weight']:.1f}" for k, v in ind["per_institution"].items())
        )
    else:
        lines.append(f"- individual context: {ind}")
    return lines


def plot_groups(result: dict[str, Any], path: Path) -> None:
    """``per_group.png``: top-1 per region and institution, one bar per column (Agg)."""
    rows = [r for r in result["rows"] if r["kind"] != "all"]
    series = [
        BarSeries(c, [r[c]["top1"] if r[c] else 0.0 for r in rows], ("tab10", j % _COLOUR_CYCLE))
        for j, c in enumerate(result["columns"])
    ]
    plot_group_bars(
        rows,
        series,
        ylabel="top-1 (test)",
        title=f"Personalization per group: {result['source']}",
        path=path,
    )


def write_outputs(result: dict[str, Any], out_dir: Path) -> None:
    """Write ``table.md``, ``table.json``, ``per_group.png`` and ``error_by_group.png`` into
    ``out_dir`` (atomic)."""
    from feddx.io import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / TABLE_MD, render_table(result))
    atomic_write_json(out_dir / TABLE_JSON, json.loads(json.dumps(result, default=str)))
    plot_groups(result, out_dir / PLOT_FILE)
    if result.get("error_by_group"):
        plot_errors(result["error_by_group"], result["source"], out_dir / ERROR_PLOT_FILE)


__all__ = [
    "PLOT_FILE",
    "TABLE_JSON",
    "TABLE_MD",
    "build_result",
    "plot_groups",
    "render_table",
    "table_rows",
    "write_outputs",
]
