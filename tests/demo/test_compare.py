"""The demo's comparisons: equal work is counted in examples processed, budgets are chosen on
validation, and only an equal-work comparison whose interval excludes 0 says "ahead"."""

from __future__ import annotations

import pytest

from feddx.demo.compare import equal_work, equal_work_verdict, first_best, own_budget_verdict
from feddx.evaluate.stats import compare_correct


@pytest.mark.parametrize(
    ("max_epochs", "rounds", "local", "expected"),
    [(4, 4, 2, (4, 2)), (8, 4, 2, (8, 4)), (3, 4, 2, (2, 1)), (1, 4, 2, None), (4, 1, 1, (1, 1))],
)
def test_equal_work_is_a_whole_number_of_rounds_both_reach(
    max_epochs: int, rounds: int, local: int, expected: tuple[int, int] | None
) -> None:
    assert equal_work(max_epochs, rounds, local) == expected


def test_the_fewest_epochs_with_the_best_validation_top1_are_chosen() -> None:
    assert first_best({1: 0.4, 2: 0.6, 3: 0.6, 4: 0.5}) == 2
    with pytest.raises(ValueError):
        first_best({})


def test_ahead_only_at_equal_work_and_only_when_the_interval_excludes_zero() -> None:
    clear = compare_correct([True] * 40 + [False] * 10, [True] * 10 + [False] * 40)
    assert clear.interval.low > 0
    assert "federated ahead" in equal_work_verdict(clear, 4, 2)
    noisy = compare_correct([True, False] * 10, [False, True] * 10)
    assert "no clear difference" in equal_work_verdict(noisy, 4, 2)
    unequal = own_budget_verdict(clear, fed_rounds=4, fed_work=8, cen_epochs=2, cen_work=2)
    assert "ahead" not in unequal and "unequal work" in unequal
    assert "federated 8 epochs' worth of examples, centralized 2" in unequal
