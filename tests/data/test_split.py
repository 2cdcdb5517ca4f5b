"""Splits and per-label caps: reproducible, stratified, and never losing a rare label."""

from __future__ import annotations

from collections import Counter

import pytest

from feddx.data.schema import Case, Label
from feddx.data.split import cap_per_label, stratified_split


def _cases(counts: dict[str, int]) -> list[Case]:
    return [
        Case(case_id=f"{dx}-{i}", text="x", label=Label(diagnosis=dx))
        for dx, n in counts.items()
        for i in range(n)
    ]


def _labels(cases: list[Case]) -> Counter[str]:
    return Counter(c.label.diagnosis for c in cases if c.label)


def test_stratified_split_keeps_every_label_on_both_sides_and_is_seeded() -> None:
    cases = _cases({"Flu": 20, "Gout": 10, "Rare": 2})
    train, test = stratified_split(cases, test_fraction=0.2, seed=1)
    assert _labels(test) == {"Flu": 4, "Gout": 2, "Rare": 1}
    assert _labels(train) == {"Flu": 16, "Gout": 8, "Rare": 1}
    assert [c.case_id for c in test] == [c.case_id for c in stratified_split(cases, 0.2, 1)[1]]
    assert {c.case_id for c in test} != {c.case_id for c in stratified_split(cases, 0.2, 2)[1]}


def test_cap_per_label_samples_the_large_labels_and_keeps_the_small_ones() -> None:
    cases = _cases({"Otitis": 50, "Sinusitis": 3})
    kept = cap_per_label(cases, 5, seed=3)
    assert _labels(kept) == {"Otitis": 5, "Sinusitis": 3}
    assert [c.case_id for c in kept] == [c.case_id for c in cases if c in kept]  # order kept
    assert kept == cap_per_label(cases, 5, seed=3)
    assert kept != cap_per_label(cases, 5, seed=4)
    assert cap_per_label(cases, 100) == cases


def test_cap_per_label_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        cap_per_label(_cases({"Flu": 2}), 0)
