"""Calibration: does a predicted probability of 0.8 come true 80% of the time?

Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
over the top-1 prediction: confidences are binned into ``n_bins`` equal-width bins on [0, 1]
and ``ECE = Σ_b (|b| / n) · |accuracy(b) − mean confidence(b)|``. The same bins give the
reliability curve the HTML report plots. Temperature scaling
(:func:`feddx.model.scoring.fit_temperature`) is fitted on cases the evaluation does not score,
either a validation split or, by cross-fitting, the other half of the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from feddx.model.predict import Prediction, with_temperature
from feddx.model.scoring import fit_temperature

DEFAULT_BINS = 15


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: its bounds, how many predictions fell in, their mean confidence
    and how often they were right (``None`` for an empty bin)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


def reliability_curve(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]; a confidence of exactly 1 falls in the last bin."""
    if len(confidences) != len(correct):
        raise ValueError("need one correctness flag per confidence")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if any(not 0.0 <= c <= 1.0 for c in confidences):
        raise ValueError("confidences must lie in [0, 1]")
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for i, c in enumerate(confidences):
        members[min(int(c * n_bins), n_bins - 1)].append(i)
    bins = []
    for b, idx in enumerate(members):
        conf = sum(confidences[i] for i in idx) / len(idx) if idx else None
        acc = sum(bool(correct[i]) for i in idx) / len(idx) if idx else None
        bins.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, len(idx), conf, acc))
    return bins


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = DEFAULT_BINS
) -> float:
    """ECE of top-1 confidences against whether the top-1 was right."""
    if not confidences:
        raise ValueError("no predictions")
    n = len(confidences)
    return sum(
        b.count / n * abs(b.accuracy - b.confidence)
        for b in reliability_curve(confidences, correct, n_bins)
        if b.count and b.accuracy is not None and b.confidence is not None
    )


def top1_confidence(preds: Sequence[Prediction]) -> tuple[list[float], list[bool]]:
    """The top-1 probability of each prediction and whether the top-1 was the gold label."""
    return [p.ranked[0].probability for p in preds], [p.top == p.gold for p in preds]


def prediction_ece(preds: Sequence[Prediction], n_bins: int = DEFAULT_BINS) -> float:
    return expected_calibration_error(*top1_confidence(preds), n_bins=n_bins)


def fit_prediction_temperature(preds: Sequence[Prediction]) -> float:
    """Temperature minimising the gold label's NLL over ``preds`` (their raw scores)."""
    rows, gold = [], []
    for p in preds:
        names = [r.name for r in p.ranked]
        if p.gold not in names:
            raise ValueError(f"case {p.case.case_id!r}: label {p.gold!r} is not a candidate")
        rows.append([r.score for r in p.ranked])  # each row is independent: order is free
        gold.append(names.index(p.gold))
    return fit_temperature(rows, gold)


def cross_fit_temperature(
    preds: Sequence[Prediction], folds: int = 2
) -> tuple[list[Prediction], list[float]]:
    """Calibrate every prediction with a temperature fitted on the *other* folds.

    Cases are dealt into ``folds`` folds round-robin (in the given order); no case's
    probability is calibrated on itself. Returns the recalibrated predictions (in the input
    order) and each fold's temperature. Raises :class:`ValueError` with fewer cases than folds.
    """
    if folds < 2 or len(preds) < folds:
        raise ValueError(f"cross-fitting needs at least {max(folds, 2)} cases and 2 folds")
    out: list[Prediction | None] = [None] * len(preds)
    temps = []
    for f in range(folds):
        train = [p for i, p in enumerate(preds) if i % folds != f]
        t = fit_prediction_temperature(train)
        temps.append(t)
        for i in range(f, len(preds), folds):
            out[i] = with_temperature(preds[i], t)
    return [p for p in out if p is not None], temps
