"""Expected calibration error, reliability bins and cross-fitted temperature scaling."""

from __future__ import annotations

import pytest

from feddx.data.schema import Case
from feddx.evaluate.calibration import (
    cross_fit_temperature,
    expected_calibration_error,
    reliability_curve,
)
from feddx.model.predict import Prediction
from feddx.model.scoring import ScoredCandidate


def test_ece_hand_computed() -> None:
    conf = [0.9, 0.9, 0.6, 0.2]
    correct = [True, False, True, False]
    # bins of width 0.2: [0.8,1] acc .5 conf .9; [0.6,0.8) acc 1 conf .6; [0.2,0.4) acc 0 conf .2
    assert expected_calibration_error(conf, correct, n_bins=5) == pytest.approx(
        2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.2
    )


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    conf = [0.75] * 4
    assert expected_calibration_error(conf, [True, True, True, False], n_bins=10) == 0.0


def test_reliability_bins_cover_the_unit_interval() -> None:
    bins = reliability_curve([1.0, 0.0, 0.55], [True, False, True], n_bins=4)
    assert [b.count for b in bins] == [1, 0, 1, 1]  # 1.0 falls in the last bin
    assert bins[1].accuracy is None and bins[3].confidence == 1.0
    with pytest.raises(ValueError):
        reliability_curve([1.5], [True])


def _pred(i: int, gold_score: float, other_score: float) -> Prediction:
    case = Case.model_validate({"case_id": f"c{i}", "label": {"diagnosis": "A"}})
    ranked = [ScoredCandidate("A", 0.5, gold_score), ScoredCandidate("B", 0.5, other_score)]
    ranked.sort(key=lambda r: -r.score)
    return Prediction(case, ranked, 1.0)


def test_cross_fitting_calibrates_each_half_on_the_other() -> None:
    # the gold label always wins by a margin: the fitted temperature is small (sharpening)
    preds = [_pred(i, 1.0, 0.0) for i in range(6)] + [_pred(6, 0.0, 1.0)]
    calibrated, temps = cross_fit_temperature(preds, folds=2)
    assert len(calibrated) == len(preds) and len(temps) == 2
    assert [p.case.case_id for p in calibrated] == [p.case.case_id for p in preds]
    assert all(sum(r.probability for r in p.ranked) == pytest.approx(1.0) for p in calibrated)
    assert calibrated[0].ranked[0].probability > preds[0].ranked[0].probability
    with pytest.raises(ValueError):
        cross_fit_temperature(preds[:1])
