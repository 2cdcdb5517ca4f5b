"""Paired statistics: checked on cases whose answer is known by hand or from a closed form."""

from __future__ import annotations

import pytest

from feddx.errors import DataError
from feddx.evaluate.stats import (
    compare_correct,
    compare_predictions,
    mcnemar_exact,
    paired_bootstrap,
)


def test_mcnemar_all_discordant_one_way() -> None:
    # b=0, c=6: P(X <= 0) = 0.5^6 under Binomial(6, 1/2), doubled for two sides
    a = [True] * 4 + [False] * 6
    b = [True] * 4 + [True] * 6
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only) == (0, 6)
    assert result.p_value == pytest.approx(2 * 0.5**6)


def test_mcnemar_balanced_and_no_discordance_give_one() -> None:
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0
    assert mcnemar_exact([True, False, True], [True, False, True]).p_value == 1.0


def test_mcnemar_matches_binomial_tail() -> None:
    # b=2, c=8: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    a = [True] * 2 + [False] * 8 + [True] * 5
    b = [False] * 2 + [True] * 8 + [True] * 5
    assert mcnemar_exact(a, b).p_value == pytest.approx(112 / 1024)


def test_bootstrap_of_identical_systems_is_zero() -> None:
    correct = [True, False, True, True, False] * 8
    interval = paired_bootstrap(correct, correct, resamples=500, seed=3)
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.resamples == 500 and interval.seed == 3


def test_bootstrap_two_cases_by_hand() -> None:
    # per-case differences [1, 0]: a resample's mean is 0, 1/2 or 1 with probability
    # 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 1
    interval = paired_bootstrap([True, False], [False, False], resamples=4000, seed=0)
    assert interval.difference == 0.5
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_bootstrap_matches_binomial_quantiles() -> None:
    # B never right, A right on 30 of 100: a resample's difference is Binomial(100, 0.3) / 100,
    # whose 2.5% and 97.5% quantiles are 0.21 and 0.39
    a = [True] * 30 + [False] * 70
    interval = paired_bootstrap(a, [False] * 100, resamples=20_000, seed=1)
    assert interval.low == pytest.approx(0.21, abs=0.011)
    assert interval.high == pytest.approx(0.39, abs=0.011)


def test_bootstrap_pairs_cases_rather_than_systems() -> None:
    # A and B agree on every case but one: the paired interval is narrow (an unpaired one,
    # resampling each system alone, would span about +-0.2 here)
    a = [True] * 25 + [False] * 24 + [True]
    b = [True] * 25 + [False] * 24 + [False]
    interval = paired_bootstrap(a, b, resamples=2000, seed=0)
    assert 0.0 <= interval.low <= interval.high <= 0.06


def test_bootstrap_is_seeded() -> None:
    a = [True, False, True, False, True, True]
    b = [False, False, True, True, False, True]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)


def test_bootstrap_refuses_unpaired_input() -> None:
    with pytest.raises(ValueError, match="same cases"):
        paired_bootstrap([True], [True, False])
    with pytest.raises(ValueError, match="no cases"):
        paired_bootstrap([], [])


def test_compare_correct_reports_both_and_the_difference() -> None:
    c = compare_correct([True, True, False, True], [True, False, False, False], resamples=200)
    assert (c.n, c.top1_a, c.top1_b, c.difference) == (4, 0.75, 0.25, 0.5)
    assert (c.mcnemar.a_only, c.mcnemar.b_only) == (2, 0)
    assert c.to_dict()["interval"]["resamples"] == 200
    assert c.describe().startswith("+50.0 points (95% paired-bootstrap interval")


def _rows(correct: dict[str, bool]) -> list[dict[str, object]]:
    return [{"case_id": k, "gold": "x", "correct": v} for k, v in correct.items()]


def test_compare_predictions_pairs_by_case_id() -> None:
    a = _rows({"1": True, "2": False, "3": True})
    b = list(reversed(_rows({"1": True, "2": True, "3": False})))
    c = compare_predictions(a, b, resamples=100)
    assert (c.mcnemar.a_only, c.mcnemar.b_only) == (1, 1)


def test_compare_predictions_refuses_other_cases() -> None:
    with pytest.raises(DataError, match="different cases"):
        compare_predictions(_rows({"1": True}), _rows({"2": True}))
    with pytest.raises(DataError, match="twice"):
        compare_predictions(_rows({"1": True}) * 2, _rows({"1": True}))
    other = [{"case_id": "1", "gold": "y", "correct": True}]
    with pytest.raises(DataError, match="different references"):
        compare_predictions(_rows({"1": True}), other)
