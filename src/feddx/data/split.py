"""Reproducible train/validation/test splits, stratified by label."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from feddx.data.schema import Case


def stratified_split(
    cases: Sequence[Case], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Case], list[Case]]:
    """Split into (train, test) keeping each label's share; unlabeled cases go to train.

    Every label with at least two cases contributes at least one case to each side, so rare
    diagnoses are evaluated rather than silently missing from the test set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    by_label: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_label[c.label.diagnosis if c.label else ""].append(c)
    train: list[Case] = []
    test: list[Case] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        if not label or len(group) < 2:
            train.extend(group)
            continue
        k = min(len(group) - 1, max(1, round(len(group) * test_fraction)))
        test.extend(group[:k])
        train.extend(group[k:])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def cap_per_label(cases: Sequence[Case], limit: int, seed: int = 0) -> list[Case]:
    """At most ``limit`` cases per diagnosis: a seeded random sample where a label has more,
    every case where it has fewer. The input order is kept, so the result is reproducible.

    Used to add a large, skewed extra release (e.g. DDXPlus v0's 19-pathology files) without
    letting its majority classes swamp the class balance of the main dataset."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    by_label: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        by_label.setdefault(c.label.diagnosis if c.label else "", []).append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        keep.update(idx if len(idx) <= limit else rng.sample(idx, limit))
    return [c for i, c in enumerate(cases) if i in keep]
