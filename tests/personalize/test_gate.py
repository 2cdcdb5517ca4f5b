"""The personalization gate: a child answers a group only with at least one more validation
case right than its parent."""

from __future__ import annotations

import pytest

from feddx.personalize.gate import GATE_MARGIN_CASES, gate


def test_one_more_right_case_passes_the_gate() -> None:
    d = gate("VA", "institutional/VA", "regional/USA", [True, True, False], [True, False, False])
    assert GATE_MARGIN_CASES == 1
    assert d.accepted and (d.child_correct, d.parent_correct, d.n_validation) == (2, 1, 3)
    assert "beats regional/USA" in d.reason


@pytest.mark.parametrize(
    ("child", "parent"),
    [([True, False], [False, True]), ([False, False], [True, False])],
    ids=["tie", "worse"],
)
def test_a_tie_or_a_loss_keeps_the_parent(child: list[bool], parent: list[bool]) -> None:
    d = gate("Cleveland", "institutional/Cleveland", "federated", child, parent)
    assert not d.accepted
    assert d.reason.endswith(": federated answers")
    assert d.to_dict()["margin_cases"] == 1 and "rule" in d.to_dict()


def test_no_validation_cases_keeps_the_parent() -> None:
    d = gate("Basel", "regional/CH", "federated", [], [])
    assert not d.accepted and "no validation cases" in d.reason


def test_lists_of_different_cases_are_refused() -> None:
    with pytest.raises(ValueError, match="2 child vs 1 parent"):
        gate("x", "a", "b", [True, False], [True])
