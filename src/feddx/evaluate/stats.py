"""Paired statistics for two systems scored on the same cases: the only place feddx computes
an interval or a p-value for a comparison.

Two systems evaluated on the same held-out cases are paired: each case is answered by both, so
the right question is how the per-case difference varies, not how each accuracy varies alone
(which would double-count the case-to-case variance both share and give intervals far too
wide). Hence:

- :func:`paired_bootstrap`: resample the cases (with replacement, the pairs kept together) and
  take the percentile interval of the difference in top-1 accuracy; seeded, with the number of
  resamples recorded, so every interval quoted in ``results/`` or the README can be reproduced;
- :func:`mcnemar_exact`: McNemar's exact test, a two-sided binomial test on the discordant
  pairs (cases one system gets right and the other wrong); concordant cases carry no
  information about which system is better;
- :func:`compare_correct` / :func:`compare_predictions`: both at once, from per-case
  correctness or from the per-case rows ``feddx evaluate --predictions`` writes (paired by
  case id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from math import comb
from typing import Any

import numpy as np

from feddx.errors import DataError

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
_CHUNK = 1_000  # resamples drawn at once: bounds memory at _CHUNK x n indices


@dataclass(frozen=True)
class BootstrapInterval:
    """The percentile interval of ``mean(a) - mean(b)`` over paired resamples of the cases.

    ``difference`` is the observed difference (on all cases); ``low``/``high`` the interval's
    ends at ``confidence``; ``resamples`` and ``seed`` say how to reproduce it.
    """

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    method: str = "paired percentile bootstrap over cases"


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test: ``a_only`` cases only A gets right, ``b_only`` only B; ``p_value``
    is the two-sided binomial probability of a split at least this uneven under p = 1/2."""

    a_only: int
    b_only: int
    p_value: float
    method: str = "McNemar exact (two-sided binomial on discordant pairs)"


@dataclass(frozen=True)
class Comparison:
    """System A against system B on the same ``n`` cases: both top-1 accuracies, their
    difference (A - B) with its bootstrap interval, and McNemar's exact p-value."""

    n: int
    top1_a: float
    top1_b: float
    interval: BootstrapInterval
    mcnemar: McNemarResult

    @property
    def difference(self) -> float:
        return self.interval.difference

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference}

    def describe(self, unit: str = "points") -> str:
        """One line for reports, e.g. ``+7.1 points (95% paired-bootstrap interval +1.1 to
        +13.0; McNemar exact p = 0.031, 12 vs 3 discordant cases)``."""
        i, m = self.interval, self.mcnemar
        return (
            f"{100 * i.difference:+.1f} {unit} ({100 * i.confidence:.0f}% paired-bootstrap "
            f"interval {100 * i.low:+.1f} to {100 * i.high:+.1f}, {i.resamples} resamples; "
            f"McNemar exact p = {m.p_value:.3g}, {m.a_only} vs {m.b_only} discordant cases)"
        )


def _paired(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[Any, Any]:
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired systems need the same cases: {a.shape} vs {b.shape}")
    if not a.size:
        raise ValueError("no cases to compare")
    return a, b


def paired_bootstrap(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile interval of the difference in accuracy between two systems on the same cases.

    ``correct_a[i]`` and ``correct_b[i]`` say whether each system got case ``i`` right. Each
    resample draws ``n`` cases with replacement (``numpy.random.default_rng(seed)``) and keeps
    both systems' answers to a drawn case together. Raises :class:`ValueError` for unequal
    lengths, no cases, ``resamples < 1`` or a confidence outside (0, 1).
    """
    a, b = _paired(correct_a, correct_b)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = a.astype(np.int8) - b.astype(np.int8)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        means[start : start + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return BootstrapInterval(
        difference=float(d.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemarResult:
    """McNemar's exact test on paired correctness: p = min(1, 2 P(X <= min(b, c))) with
    X ~ Binomial(b + c, 1/2), where b (c) counts cases only A (only B) gets right; p = 1 when
    there are no discordant cases. Exact integer arithmetic, so small p-values do not underflow
    into rounding error."""
    a, b = _paired(correct_a, correct_b)
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    n = a_only + b_only
    tail = sum(comb(n, k) for k in range(min(a_only, b_only) + 1))
    p = min(1.0, 2 * tail / 2**n)
    return McNemarResult(a_only=a_only, b_only=b_only, p_value=p)


def compare_correct(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """Both systems' top-1, the paired bootstrap interval of A - B and McNemar's p."""
    a, b = _paired(correct_a, correct_b)
    return Comparison(
        n=int(a.size),
        top1_a=float(a.mean()),
        top1_b=float(b.mean()),
        interval=paired_bootstrap(a, b, resamples=resamples, confidence=confidence, seed=seed),
        mcnemar=mcnemar_exact(a, b),
    )


def compare_predictions(
    rows_a: Sequence[Mapping[str, Any]],
    rows_b: Sequence[Mapping[str, Any]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """:func:`compare_correct` over per-case rows (``case_id``, ``gold``, ``correct``: what
    :func:`feddx.evaluate.harness.case_rows` returns and ``feddx evaluate --predictions``
    writes), paired by case id.

    Raises :class:`DataError` unless both hold the same cases once each with the same
    reference: a comparison over different cases is not paired, and its interval would be
    wrong.
    """
    a, b = _by_case(rows_a, "A"), _by_case(rows_b, "B")
    if a.keys() != b.keys():
        only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        raise DataError(
            f"the two systems were scored on different cases ({only_a} only in A, {only_b} only "
            "in B): compare predictions on the same split"
        )
    ids = sorted(a)
    differ = [i for i in ids if a[i].get("gold") != b[i].get("gold")]
    if differ:
        raise DataError(
            f"{len(differ)} cases have different references in A and B (e.g. case {differ[0]!r})"
        )
    return compare_correct(
        [bool(a[i]["correct"]) for i in ids],
        [bool(b[i]["correct"]) for i in ids],
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )


def _by_case(rows: Sequence[Mapping[str, Any]], name: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if "case_id" not in row or "correct" not in row:
            raise DataError(f"system {name}: a prediction row lacks 'case_id' or 'correct'")
        key = str(row["case_id"])
        if key in out:
            raise DataError(f"system {name}: case {key!r} appears twice")
        out[key] = row
    if not out:
        raise DataError(f"system {name}: no predictions")
    return out
