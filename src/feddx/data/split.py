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
