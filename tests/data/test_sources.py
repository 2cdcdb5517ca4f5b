"""``load_cases``: one entry point from a ``SOURCE[:PATH]`` spec to labeled cases, with the
frequent-label filter and the stratified sample the personalization configs use."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from feddx.data.jsonl import write_jsonl
from feddx.data.schema import Case, Finding, Label
from feddx.data.sources import load_cases
from feddx.errors import DataError


def _cases() -> list[Case]:
    counts = {"Asthma": 6, "Pneumonia": 4, "Bronchitis": 4, "Gout": 1}
    return [
        Case(case_id=f"{dx}-{i}", findings=(Finding(name="cough"),), label=Label(diagnosis=dx))
        for dx, n in counts.items()
        for i in range(n)
    ]


def test_top_labels_keeps_the_most_frequent_diagnoses_ties_by_name(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    write_jsonl(_cases(), path)
    loaded = load_cases(f"jsonl:{path}", top_labels=2)
    # Asthma (6), then the tie Bronchitis/Pneumonia (4 each) broken by name: Bronchitis
    assert Counter(c.require_label().diagnosis for c in loaded.cases) == {
        "Asthma": 6,
        "Bronchitis": 4,
    }
    assert loaded.info["top_labels"] == 2 and loaded.info["n_labeled"] == 15
    assert len(load_cases(f"jsonl:{path}").cases) == 15  # 0: every label


def test_top_labels_then_a_stratified_sample(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    write_jsonl(_cases(), path)
    loaded = load_cases(f"jsonl:{path}", top_labels=3, max_cases=7, seed=1)
    labels = {c.require_label().diagnosis for c in loaded.cases}
    assert len(loaded.cases) == 7 and labels <= {"Asthma", "Bronchitis", "Pneumonia"}
    assert [c.case_id for c in loaded.cases] == sorted(c.case_id for c in loaded.cases)


def test_an_unknown_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nosuch"):
        load_cases(f"nosuch:{tmp_path}")
