"""Reproducible train/test splits, stratified by label and grouped by patient.

A patient's cases never straddle a split: when cases carry a ``patient_id`` (eICU's
``uniquepid``, a FHIR Patient, a CSV's ``patient_id`` column), every case of one patient lands
on the same side, so a model is never scored on a patient it was trained on (eICU has several
stays per patient, a FHIR bundle many encounters per patient). Stratification by diagnosis is
kept as far as the grouping allows: each patient counts under their most frequent diagnosis,
and whole patients are moved to the test side while that brings each diagnosis's test share
closer to ``test_fraction``. Where every patient has one case (UCI Heart, DDXPlus, cases
without a patient id), the split is exactly the per-case stratified split.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from feddx.data.schema import Case

_Unit = list[Case]  # the cases of one patient (or one case without a patient id)


def stratified_split(
    cases: Sequence[Case], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Case], list[Case]]:
    """Split into (train, test), grouped by patient, keeping each label's share.

    Every label with at least two cases contributes at least one case to each side (with
    several cases per patient: as far as whole patients allow), so rare diagnoses are evaluated
    rather than silently missing from the test set. Unlabeled cases go with their patient; a
    patient without a labeled case goes to train.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    by_label: dict[str, list[_Unit]] = defaultdict(list)
    for unit in patient_units(cases):
        by_label[unit_label(unit)].append(unit)
    held: list[_Unit] = []
    kept: list[_Unit] = []
    lone: list[_Unit] = []  # the only patient of their diagnosis
    for label in sorted(by_label):
        units = list(by_label[label])
        rng.shuffle(units)
        if not label or len(units) < 2:
            kept.extend(units)
            lone.extend(units if label else [])
            continue
        n = sum(len(u) for u in units)
        h, k = _take_near(units, min(n - 1, max(1, round(n * test_fraction))))
        held.extend(h)
        kept.extend(k)
    if any(len(u) > 1 for u in held + kept):
        held, kept = _balance_grouped(held, kept, lone, round(len(cases) * test_fraction), rng)
    train = [c for u in kept for c in u]
    test = [c for u in held for c in u]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def patient_units(cases: Sequence[Case]) -> list[_Unit]:
    """The cases grouped by ``patient_id`` in order of first appearance; a case without one is
    a group of its own."""
    units: dict[object, _Unit] = {}
    for i, c in enumerate(cases):
        units.setdefault(c.patient_id if c.patient_id else ("case", i), []).append(c)
    return list(units.values())


def split_grouping(cases: Sequence[Case]) -> str:
    """How :func:`stratified_split` splits these cases, for every output that reports a split:
    ``"stratified by diagnosis, grouped by patient (N patients with several cases)"``, or
    ``"stratified by diagnosis, one case per patient"`` where grouping changes nothing."""
    shared = sum(len(u) > 1 for u in patient_units(cases))
    if not shared:
        return "stratified by diagnosis, one case per patient"
    return f"stratified by diagnosis, grouped by patient ({shared} patients with several cases)"


def unit_label(unit: _Unit) -> str:
    """The diagnosis a patient is stratified under: their most frequent, ties by name ("" for
    a patient without a labeled case)."""
    counts = Counter(c.label.diagnosis for c in unit if c.label)
    if not counts:
        return ""
    return min(counts, key=lambda d: (-counts[d], d))  # most frequent, ties by name


def _balance_grouped(
    held: list[_Unit], kept: list[_Unit], lone: list[_Unit], target: int, rng: random.Random
) -> tuple[list[_Unit], list[_Unit]]:
    """Two corrections only patients with several cases need. Their minor diagnoses can end up
    in test alone: such a patient goes back to train, so every test diagnosis is also trained
    on where grouping allows it. And patients with many cases leave many diagnoses with one
    patient, all in train: those are held out too, towards the overall ``target`` test size,
    first only where their diagnoses stay in train without them, then (when the test side
    would otherwise hold under half its share) any of them: a test diagnosis that was never
    trained on is then possible, and counted as the miss it is."""
    trained = Counter(d for u in kept for d in _labels(u))
    for unit in list(held):  # moving a patient only adds diagnoses to train: one pass suffices
        if not set(_labels(unit)) <= trained.keys():
            held = [u for u in held if u is not unit]
            kept.append(unit)
            trained.update(_labels(unit))
    taken = sum(len(u) for u in held)
    rng.shuffle(lone)
    for strict in (True, False):
        if not strict and 2 * taken >= target:
            break
        # strict: only patients whose diagnoses all stay in train; else (a split that would
        # hold out under half its share, e.g. 10 patients with 45 diagnoses) any of them
        for unit in [u for u in lone if any(u is k for k in kept)]:
            own = Counter(_labels(unit))
            stays = all(trained[d] > n for d, n in own.items())
            if (stays or not strict) and abs(taken + len(unit) - target) < abs(taken - target):
                kept = [u for u in kept if u is not unit]
                held.append(unit)
                taken += len(unit)
                trained.subtract(own)
    return held, kept


def _labels(unit: _Unit) -> list[str]:
    return [c.label.diagnosis for c in unit if c.label]


def _take_near(
    units: list[_Unit], k: int, *, both_sides: bool = True
) -> tuple[list[_Unit], list[_Unit]]:
    """Walk the (shuffled) patients, holding one out whenever that brings the held-out case
    count closer to ``k``; with ``both_sides``, at least one patient stays on each side. With
    one case per patient this holds out exactly the first ``k``."""
    held: list[_Unit] = []
    kept: list[_Unit] = []
    taken = 0
    for i, unit in enumerate(units):
        last_for_train = both_sides and i == len(units) - 1 and not kept
        if not last_for_train and abs(taken + len(unit) - k) < abs(taken - k):
            held.append(unit)
            taken += len(unit)
        else:
            kept.append(unit)
    if both_sides and not held:  # every patient larger than 2k cases: hold out the smallest
        held.append(kept.pop(min(range(len(kept)), key=lambda j: len(kept[j]))))
    return held, kept


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
