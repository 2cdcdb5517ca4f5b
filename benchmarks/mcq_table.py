"""The markdown table of results/mcq.md from the JSON results ``benchmarks/mcq_medqa.sh`` writes.

    .venv/bin/python benchmarks/mcq_table.py [results/mcq]

One row per model and protocol: accuracy with its 95% bootstrap interval, parse failures,
per-subject accuracy; then the paired difference likelihood - flowertune per model (bootstrap
interval and McNemar's exact p, as ``feddx evaluate`` computed them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _pct(x: float) -> str:
    return f"{x:.2f}"


def rows(name: str, body: dict[str, Any]) -> list[str]:
    out = []
    for p in body["protocols"].values():
        ci = p["accuracy_ci95"]
        subjects = ", ".join(
            f"{s} {_pct(v['accuracy'])} (n={v['n']})" for s, v in p.get("per_subject", {}).items()
        )
        failures = f"{p['parse_failures']} / {p['n']}" if "parse_failures" in p else "-"
        out.append(
            f"| {name} | {p['protocol']} | **{_pct(p['accuracy'])}** ({p['correct']}/{p['n']}) | "
            f"{_pct(ci['low'])}-{_pct(ci['high'])} | {failures} | {subjects} | {p['seconds']:.0f} |"
        )
    return out


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/mcq")
    bodies = {f.stem: json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))}
    print("| model | protocol | accuracy | 95% interval | parse failures | per subject | s |")
    print("|---|---|---|---|---|---|---|")
    for name, body in bodies.items():
        print("\n".join(rows(name, body)))
    print()
    for name, body in bodies.items():
        c = body["comparison"]
        i, m = c["interval"], c["mcnemar"]
        print(
            f"- {name}: {c['a']} - {c['b']} = {100 * c['difference']:+.0f} points (95% paired "
            f"bootstrap {100 * i['low']:+.0f} to {100 * i['high']:+.0f}; McNemar exact p = "
            f"{m['p_value']:.2g}, {m['a_only']} vs {m['b_only']} discordant questions)"
        )


if __name__ == "__main__":
    main()
