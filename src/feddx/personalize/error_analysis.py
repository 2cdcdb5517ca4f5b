"""Per-region error analysis: the test error (1 - top-1) of every region and institution at
each level of personalization, global -> regional -> institutional -> individual, with the
counts it is made of and how much each level changed it.

A level's column is the one the run deploys at that level: ``global``; the default regional
construction (chosen on validation); the default institutional method (chosen on pooled
validation, each institution answered by its own adapter); and, where the individual level
ran, the adapter the gate leaves answering each institution plus its institutional retrieval
prior. Region and ``all`` rows pool their institutions' test cases, so a row's ``wrong`` and
``n`` are true counts of cases, and every level of a row is scored on the same cases: the
change from one level to the next is a paired difference, given with its paired-bootstrap
interval and McNemar's exact p (:mod:`feddx.evaluate.stats`; a few test cases per institution
give wide intervals, which is what they are).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from feddx.personalize.choose import Choice
from feddx.personalize.columns import INDIVIDUAL, column_key, scopes
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.group_bars import BarSeries, plot_group_bars
from feddx.personalize.groups import Groups, Institution
from feddx.personalize.levels import Hierarchy
from feddx.personalize.scoring import Preds

ERROR_PLOT_FILE = "error_by_group.png"
# the paired bootstrap per change; fewer than the stats module's default, as a run makes
# (1 + regions + institutions) x 3 of them
RESAMPLES = 2000


def error_levels(config: PersonalizeConfig, choice: Choice) -> list[tuple[str, str]]:
    """``(level, column)`` pairs, least personalized first (see the module docstring)."""
    return [
        ("global", "global"),
        ("regional", f"+regional ({choice.default_regional})"),
        ("institutional", f"+institutional ({choice.default_method})"),
        *([("individual", INDIVIDUAL)] if config.individual else []),
    ]


def _correct(
    members: Sequence[Institution],
    column: str,
    config: PersonalizeConfig,
    hierarchy: Hierarchy,
    choice: Choice,
    test_preds: Preds,
) -> list[bool] | None:
    """Whether ``column`` got each test case of ``members`` right (institutions in order, each
    one's cases in order); ``None`` when one of them has no adapter for the column."""
    out: list[bool] = []
    for inst in members:
        key = column_key(column, inst, config, hierarchy, choice)
        if key is None or key not in test_preds[inst.name]:
            return None
        out.extend(p.top == p.gold for p in test_preds[inst.name][key])
    return out


def _change(after: list[bool], before: list[bool], seed: int) -> dict[str, Any]:
    """The change in error from ``before`` to ``after`` (negative: fewer errors), with its
    paired-bootstrap interval and McNemar's exact p."""
    from feddx.evaluate.stats import compare_correct

    c = compare_correct(after, before, resamples=RESAMPLES, seed=seed)
    return {
        "error_change": 0.0 - c.difference,  # 0.0 - x: no "-0.0" for no change
        "low": 0.0 - c.interval.high,
        "high": 0.0 - c.interval.low,
        "confidence": c.interval.confidence,
        "resamples": c.interval.resamples,
        "fixed": c.mcnemar.a_only,  # cases only the later level gets right
        "broken": c.mcnemar.b_only,  # cases only the earlier level gets right
        "mcnemar_p": c.mcnemar.p_value,
    }


def error_by_group(
    config: PersonalizeConfig,
    groups: Groups,
    hierarchy: Hierarchy,
    choice: Choice,
    test_preds: Preds,
) -> dict[str, Any]:
    """The ``error_by_group`` entry of ``table.json``: the levels, and per row (all, each
    region, its institutions) the test cases ``n``, per level ``{"wrong", "n", "error"}``
    (``None`` where the level has no adapter for the row), and per level after the first the
    change from the level before (:func:`_change`)."""
    levels = error_levels(config, choice)
    rows = []
    for kind, name, members in scopes(groups):
        row: dict[str, Any] = {
            "kind": kind,
            "group": name,
            "region": members[0].region if kind != "all" else None,
            "n": sum(len(i.test) for i in members),
            "levels": {},
            "changes": {},
        }
        previous: list[bool] | None = None
        for level, column in levels:
            right = _correct(members, column, config, hierarchy, choice, test_preds)
            if right is None or not right:
                row["levels"][level] = None
                continue
            wrong = sum(not r for r in right)
            row["levels"][level] = {"wrong": wrong, "n": len(right), "error": wrong / len(right)}
            if previous is not None and len(previous) == len(right):
                row["changes"][level] = _change(right, previous, config.seed)
            previous = right
        rows.append(row)
    return {
        "levels": [{"level": lv, "column": c} for lv, c in levels],
        "rows": rows,
        "plot": ERROR_PLOT_FILE,
    }


def _cell(m: dict[str, Any] | None) -> str:
    return "—" if m is None else f"{m['error']:.3f} ({m['wrong']}/{m['n']})"


def _change_cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "—"
    return (
        f"{100 * c['error_change']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
        f" p={c['mcnemar_p']:.2g}"
    )


def render_errors(analysis: dict[str, Any]) -> list[str]:
    """The ``table.md`` section: error per group and level (wrong/n), then the change each
    level made, in points, with its interval and McNemar's p."""
    levels = [lv["level"] for lv in analysis["levels"]]
    columns = ", ".join(f"{lv['level']} = `{lv['column']}`" for lv in analysis["levels"])
    lines = [
        "",
        "## Error by region and institution",
        "",
        f"Test error (1 - top-1) and its counts (wrong/n) at each level: {columns}. "
        "Region and `all` rows pool their institutions' cases.",
        "",
        *_group_table(analysis["rows"], levels, lambda r, lv: _cell(r["levels"].get(lv))),
    ]
    later = levels[1:]
    first = next((c for r in analysis["rows"] for c in r["changes"].values()), None)
    interval = (
        f"{100 * first['confidence']:.0f}% paired-bootstrap interval, {first['resamples']} "
        "resamples"
        if first
        else "paired-bootstrap interval"
    )
    lines += [
        "",
        f"Change in error from the level before (points, negative = fewer errors; {interval}; "
        "McNemar exact p):",
        "",
        *_group_table(analysis["rows"], later, lambda r, lv: _change_cell(r["changes"].get(lv))),
    ]
    return lines


def _group_table(
    rows: Sequence[dict[str, Any]], levels: list[str], cell: Callable[[dict[str, Any], str], str]
) -> list[str]:
    """A markdown table of one row per group (its name and n) and one column per level,
    ``cell(row, level)`` in each: the error table and the change table differ only there."""
    lines = ["| group | n | " + " | ".join(levels) + " |", "|---|---:|" + "---:|" * len(levels)]
    for r in rows:
        cells = " | ".join(cell(r, lv) for lv in levels)
        lines.append(f"| {_name(r)} | {r['n']} | {cells} |")
    return lines


def _name(row: dict[str, Any]) -> str:
    return {"all": "**all**", "region": f"**{row['group']}**"}.get(
        row["kind"], f"&nbsp;&nbsp;{row['group']}"
    )


def plot_errors(analysis: dict[str, Any], source: str, path: Path) -> None:
    """``error_by_group.png``: per region and institution, one bar per level (the error),
    each bar labelled with its count of wrong cases; n under each group (Agg)."""
    rows = [r for r in analysis["rows"] if r["kind"] != "all"]
    levels = [lv["level"] for lv in analysis["levels"]]
    series = []
    for j, level in enumerate(levels):
        cells = [r["levels"].get(level) for r in rows]
        series.append(
            BarSeries(
                level,
                [c["error"] if c else 0.0 for c in cells],
                ("viridis", j / len(levels)),
                [str(c["wrong"]) if c else "" for c in cells],
            )
        )
    plot_group_bars(
        rows,
        series,
        ylabel="test error (1 - top-1); bar labels: wrong cases",
        title=f"Error per region and institution by level: {source}",
        path=path,
    )


__all__ = ["ERROR_PLOT_FILE", "error_by_group", "error_levels", "plot_errors", "render_errors"]
