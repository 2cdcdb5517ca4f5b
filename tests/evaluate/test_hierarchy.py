"""ICD-10 hierarchical scoring on hand-computed cases (a stand-in hierarchy keeps the
arithmetic visible), plus one check against the real ICD-10 terminology module."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from feddx.evaluate.hierarchy import hierarchical_f1


@dataclass(frozen=True)
class _Levels:
    chapter: str | None
    block: str | None
    category: str | None


_TABLE = {
    "I20": _Levels("IX", "I20-I25", "I20"),
    "I21": _Levels("IX", "I20-I25", "I21"),
    "I26": _Levels("IX", "I26-I28", "I26"),
    "K21": _Levels("XI", "K20-K31", "K21"),
    "J18": _Levels("X", "J09-J18", "J18"),
}


def _levels(code: str) -> _Levels:
    return _TABLE.get(code, _Levels(None, None, None))


def test_per_level_and_hierarchical_f1() -> None:
    gold = ["I20", "I26", "K21", "J18", None]
    pred = ["I20", "I21", "K21", "I26", "K21"]
    m = hierarchical_f1(gold, pred, _levels)
    assert m["chapter_n"] == 4  # the case without a gold code is left out
    assert m["chapter_accuracy"] == pytest.approx(3 / 4)
    assert m["chapter_f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)  # IX, X, XI
    assert m["block_accuracy"] == pytest.approx(2 / 4)
    assert m["block_f1"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)
    assert m["category_accuracy"] == pytest.approx(2 / 4)
    assert m["category_f1"] == pytest.approx(0.5)
    # ancestor sets: 3 + 1 + 3 + 0 shared nodes out of 12 predicted and 12 gold
    assert m["hierarchical_precision"] == pytest.approx(7 / 12)
    assert m["hierarchical_recall"] == pytest.approx(7 / 12)
    assert m["hierarchical_f1"] == pytest.approx(7 / 12)
    assert m["n_coded"] == 4


def test_a_prediction_without_a_code_is_wrong_at_every_level() -> None:
    m = hierarchical_f1(["I20"], [None], _levels)
    assert m["chapter_accuracy"] == 0.0 and m["hierarchical_f1"] == 0.0


def test_real_icd10_hierarchy() -> None:
    import feddx.data.icd10 as icd10

    m = hierarchical_f1(["I21.4", "K21.9"], ["I25.1", "K21.9"], icd10.icd10_levels)
    assert m["chapter_accuracy"] == 1.0  # both circulatory / both digestive
    assert m["block_accuracy"] == 1.0  # I21 and I25 share I20-I25
    assert m["category_accuracy"] == 0.5
