"""Stored history merged into a request keeps every kind of item, allergies included."""

from __future__ import annotations

from feddx.data.schema import Case, History
from feddx.serve.history import merge_history


def test_merge_keeps_allergies_from_both_sides() -> None:
    case = Case(case_id="c", history=History(allergies=("penicillin",)))
    merged = merge_history(case, History(allergies=("latex", "penicillin"), medications=("x",)))
    assert merged.history.allergies == ("penicillin", "latex")
    assert merged.history.medications == ("x",)
