"""The markdown tables of ``results/individual.md`` from ``benchmarks/individual.py``'s JSON:
top-1 (top-3) per arm and subset, and every paired comparison with its bootstrap interval and
McNemar p, so the results file shows exactly what the run wrote.

    .venv/bin/python benchmarks/individual_table.py results/individual_trained_eicu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SUBSETS = ("all", "with_history", "with_earlier_encounters")


def arms_table(run: dict[str, Any]) -> list[str]:
    """One row per arm: top-1 / top-3 (n) on each test subset."""
    subsets = [s for s in SUBSETS if s in next(iter(run["table"].values()))]
    rows = [
        "| arm | "
        + " | ".join(f"{s.replace('_', ' ')}: top-1 / top-3 (n)" for s in subsets)
        + " |",
        "|---|" + "---:|" * len(subsets),
    ]
    for arm, by_subset in run["table"].items():
        cells = [
            f"{m['top1']:.3f} / {m['top3']:.3f} ({m['n']})" for m in (by_subset[s] for s in subsets)
        ]
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return rows


def comparisons_table(run: dict[str, Any]) -> list[str]:
    """One row per comparison and subset: A - B in top-1 points, 95% interval, McNemar."""
    rows = [
        "| comparison (A - B, top-1) | subset | n | A | B | A - B [95% CI] | only A / only B | p |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, by_subset in run["comparisons"].items():
        for subset, c in by_subset.items():
            iv, mc = c["interval"], c["mcnemar"]
            rows.append(
                f"| {label} | {subset.replace('_', ' ')} | {c['n']} | {c['top1_a']:.3f} | "
                f"{c['top1_b']:.3f} | {100 * iv['difference']:+.1f} "
                f"[{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}] | "
                f"{mc['a_only']} / {mc['b_only']} | {mc['p_value']:.3g} |"
            )
    return rows


def main() -> None:
    for path in sys.argv[1:]:
        run = json.loads(Path(path).read_text())
        print(f"<!-- {path} -->")
        print("\n".join(arms_table(run)))
        print()
        print("\n".join(comparisons_table(run)))
        print()


if __name__ == "__main__":
    main()
