"""Classification metrics over ranked predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from feddx.model.predict import Prediction


def top_k_accuracy(preds: Sequence[Prediction], k: int) -> float:
    """Share of cases whose reference diagnosis is among the first ``k`` candidates."""
    if not preds:
        raise ValueError("no predictions")
    hits = sum(p.case.require_label().diagnosis in {r.name for r in p.ranked[:k]} for p in preds)
    return hits / len(preds)


def macro_f1(preds: Sequence[Prediction]) -> float:
    """F1 averaged over the reference labels present, each label weighing the same."""
    gold = [p.case.require_label().diagnosis for p in preds]
    return float(
        f1_score(
            gold, [p.top for p in preds], labels=sorted(set(gold)), average="macro", zero_division=0
        )
    )


def balanced_accuracy(preds: Sequence[Prediction]) -> float:
    """Mean per-class recall over the reference labels (robust to skewed label counts)."""
    gold = [p.case.require_label().diagnosis for p in preds]
    return float(balanced_accuracy_score(gold, [p.top for p in preds]))


def latency_percentiles(preds: Sequence[Prediction]) -> dict[str, float]:
    lat = np.array([p.latency_ms for p in preds])
    return {
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
    }


def summary(preds: Sequence[Prediction]) -> dict[str, float | int]:
    """The headline figures every evaluation reports."""
    return {
        "n": len(preds),
        "top1": top_k_accuracy(preds, 1),
        "top3": top_k_accuracy(preds, 3),
        "top5": top_k_accuracy(preds, 5),
        "macro_f1": macro_f1(preds),
        "balanced_accuracy": balanced_accuracy(preds),
        **latency_percentiles(preds),
    }


def confusion(
    preds: Sequence[Prediction], order: Sequence[str] = ()
) -> tuple[list[str], list[list[int]]]:
    """Confusion matrix of gold (rows) against top-1 (columns) over the labels that occur.

    Labels follow ``order`` (e.g. the candidate list) where given, then any others sorted.
    """
    seen = {p.gold for p in preds} | {p.top for p in preds}
    labels = [x for x in order if x in seen] + sorted(seen - set(order))
    index = {x: i for i, x in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for p in preds:
        matrix[index[p.gold]][index[p.top]] += 1
    return labels, matrix
