"""The demo report's per-region error analysis (issue 24 item 5): true counts per region and
hospital before and after personalization, read from results.json alone."""

from __future__ import annotations

from typing import Any

from feddx.demo.report import render_report


def _results(personalized: bool = True) -> dict[str, Any]:
    data = {
        "n_cases": 100,
        "source": "jsonl",
        "n_train": 83,
        "n_test": 17,
        "split": "stratified",
        "partition_note": "by institution",
        "majority_class": "x",
        "majority_rate": 0.5,
        "partition": {"regions": {"A": "north", "B": "north", "C": "south"}},
    }
    stages: dict[str, Any] = {"data": data}
    if personalized:
        stages["personalized"] = {
            "parent": "federated",
            **{"n": 17, "top1": 11 / 17, "top3": 1.0, "macro_f1": 0.5, "ece": 0.1},
            **{"epochs": 1, "individual": "no history", "adapters": {}},
            "answering": {"A": "institutional/A", "B": "regional/north", "C": "federated"},
        }
    return {
        "stages": stages,
        "per_hospital": [
            {
                "hospital": "all",
                "n": 17,
                "majority_rate": 0.5,
                "federated": 8 / 17,
                "personalized": 11 / 17,
            },
            {"hospital": "A", "n": 10, "majority_rate": 0.5, "federated": 0.4, "personalized": 0.7},
            {
                "hospital": "B",
                "n": 3,
                "majority_rate": 0.5,
                "federated": 2 / 3,
                "personalized": 2 / 3,
            },
            {"hospital": "C", "n": 4, "majority_rate": 0.5, "federated": 0.5, "personalized": 0.5},
        ],
    }


def test_errors_per_region_and_hospital_with_their_counts() -> None:
    page = render_report(_results())
    section = page.split("<h2>Error by region and hospital</h2>")[1].split("<h2>")[0]
    # north pools A and B: 6 + 1 wrong of 13 before, 3 + 1 after
    assert "<td>region north</td><td>13</td><td>0.538 (7/13)</td><td>0.308 (4/13)</td>" in section
    assert "<td>-23.1</td>" in section
    assert "<td>↳ A</td><td>10</td><td>0.600 (6/10)</td><td>0.300 (3/10)</td>" in section
    assert "<td>institutional</td>" in section and "<td>regional</td>" in section
    assert "<td>region south</td><td>4</td><td>0.500 (2/4)</td><td>0.500 (2/4)</td>" in section
    assert "alt='error per region' src='data:image/png;base64," in section


def test_no_section_without_a_personalized_stage() -> None:
    assert "Error by region" not in render_report(_results(personalized=False))
