"""DDXPlus differential metrics (GTPA, GTPA@k, DDR, DDP, DDF1) on hand-computed cases."""

from __future__ import annotations

import pytest

from feddx.evaluate.differential import differential_metrics

PREDICTED = [
    {"A": 0.5, "B": 0.3, "C": 0.195, "D": 0.005},  # differential {A,B,C} vs gold {A,B,E}
    {"A": 0.7, "B": 0.295, "C": 0.005},  # differential {A,B} vs gold {B,C}; top-1 wrong
    {"C": 1.0, "A": 0.0, "B": 0.0},  # pathology A ranked 2nd but at probability 0
]
GOLD = ["A", "B", "A"]
DIFFS = [{"A": 0.6, "B": 0.3, "E": 0.1}, {"B": 0.8, "C": 0.2}, None]


def test_reference_definitions_with_threshold() -> None:
    m = differential_metrics(PREDICTED, GOLD, DIFFS)
    assert m["gtpa"] == pytest.approx(2 / 3)
    assert m["gtpa@1"] == pytest.approx(1 / 3)
    # case 3 has A in its top 3, but GTPA@k also requires probability above the threshold
    assert m["gtpa@3"] == pytest.approx(2 / 3)
    assert m["gtpa@5"] == pytest.approx(2 / 3)
    assert m["n_differential"] == 2  # the case without a differential is left out
    assert m["ddr"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["ddp"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["ddf1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_top_k_cut_of_the_predicted_differential() -> None:
    m = differential_metrics(PREDICTED, GOLD, DIFFS, top_k=1)
    # case 1: {A} vs {A,B,E}: R 1/3, P 1, F1 1/2; case 2: {A} vs {B,C}: all 0
    assert m["ddr"] == pytest.approx(1 / 6)
    assert m["ddp"] == pytest.approx(1 / 2)
    assert m["ddf1"] == pytest.approx(1 / 4)


def test_ground_truth_entries_at_or_below_threshold_do_not_count() -> None:
    m = differential_metrics([{"A": 0.9, "B": 0.1}], ["A"], [{"A": 0.99, "B": 0.01}])
    assert m["ddr"] == 1.0 and m["ddp"] == 0.5  # B (0.01) is not in the gold differential


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        differential_metrics(PREDICTED, GOLD[:2], DIFFS)
    with pytest.raises(ValueError, match="top_k"):
        differential_metrics(PREDICTED, GOLD, DIFFS, top_k=0)
