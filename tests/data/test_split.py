"""Splits and per-label caps: reproducible, stratified, grouped by patient, and never losing a
rare label."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from feddx.data.schema import Case, Label
from feddx.data.split import cap_per_label, split_grouping, stratified_split


def _cases(counts: dict[str, int]) -> list[Case]:
    return [
        Case(case_id=f"{dx}-{i}", text="x", label=Label(diagnosis=dx))
        for dx, n in counts.items()
        for i in range(n)
    ]


def _labels(cases: list[Case]) -> Counter[str]:
    return Counter(c.label.diagnosis for c in cases if c.label)


def test_stratified_split_keeps_every_label_on_both_sides_and_is_seeded() -> None:
    cases = _cases({"Flu": 20, "Gout": 10, "Rare": 2})
    train, test = stratified_split(cases, test_fraction=0.2, seed=1)
    assert _labels(test) == {"Flu": 4, "Gout": 2, "Rare": 1}
    assert _labels(train) == {"Flu": 16, "Gout": 8, "Rare": 1}
    assert [c.case_id for c in test] == [c.case_id for c in stratified_split(cases, 0.2, 1)[1]]
    assert {c.case_id for c in test} != {c.case_id for c in stratified_split(cases, 0.2, 2)[1]}


def test_cap_per_label_samples_the_large_labels_and_keeps_the_small_ones() -> None:
    cases = _cases({"Otitis": 50, "Sinusitis": 3})
    kept = cap_per_label(cases, 5, seed=3)
    assert _labels(kept) == {"Otitis": 5, "Sinusitis": 3}
    assert [c.case_id for c in kept] == [c.case_id for c in cases if c in kept]  # order kept
    assert kept == cap_per_label(cases, 5, seed=3)
    assert kept != cap_per_label(cases, 5, seed=4)
    assert cap_per_label(cases, 100) == cases


def test_cap_per_label_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        cap_per_label(_cases({"Flu": 2}), 0)


def _patients(spec: dict[str, list[str]]) -> list[Case]:
    """Cases of several patients: patient id -> that patient's diagnoses, one case each."""
    return [
        Case(case_id=f"{pid}-{i}", patient_id=pid, text="x", label=Label(diagnosis=dx))
        for pid, dxs in spec.items()
        for i, dx in enumerate(dxs)
    ]


def _overlap(train: list[Case], test: list[Case]) -> set[str | None]:
    return {c.patient_id for c in train} & {c.patient_id for c in test}


def test_a_patients_cases_stay_on_one_side() -> None:
    # 30 patients with 1-4 stays each, diagnoses mixed within a patient
    spec = {
        f"p{i}": [("Flu", "Gout", "Sepsis")[(i + j) % 3] for j in range(1 + i % 4)]
        for i in range(30)
    }
    cases = _patients(spec)
    for seed in range(5):
        train, test = stratified_split(cases, test_fraction=0.25, seed=seed)
        assert not _overlap(train, test)
        assert len(train) + len(test) == len(cases)
        assert abs(len(test) - 0.25 * len(cases)) <= 6  # near the share, whole patients only
        assert set(_labels(test)) <= set(_labels(train))  # every test diagnosis was trained on
    assert "grouped by patient (22 patients" in split_grouping(cases)


def test_one_case_per_patient_is_the_per_case_split() -> None:
    # patient ids that are all distinct change nothing: same cases, same sides, same order
    plain = _cases({"Flu": 20, "Gout": 10, "Rare": 2})
    with_ids = [c.model_copy(update={"patient_id": f"pt-{c.case_id}"}) for c in plain]
    a = stratified_split(plain, 0.2, 1)
    b = stratified_split(with_ids, 0.2, 1)
    assert [[c.case_id for c in side] for side in a] == [[c.case_id for c in side] for side in b]
    assert split_grouping(with_ids) == "stratified by diagnosis, one case per patient"


def test_uci_heart_split_is_unchanged_by_grouping() -> None:
    # UCI Heart has one row per patient: the demo's 736/184 split must be exactly the one
    # every recorded figure was measured on (the hash of both sides' ids, in order)
    from feddx.data.sources import load_cases

    cases = load_cases("uci-heart", purpose="split").cases
    train, test = stratified_split(cases, 0.2, 0)
    assert (len(train), len(test)) == (736, 184)
    ids = "\n".join(c.case_id for c in train) + "|" + "\n".join(c.case_id for c in test)
    digest = hashlib.sha256(ids.encode()).hexdigest()
    assert digest == "f35d333e54a9e3a74e33913e8a799694497170ca33c2bcee86aeb15903078b91"


@pytest.mark.parametrize(
    ("spec", "fraction"),
    [("eicu:eicu_demo", 0.2), ("eicu:eicu_demo", 0.25), ("fhir:fhir", 0.25)],
)
def test_real_splits_have_no_patient_on_both_sides(
    shared_data: Path, spec: str, fraction: float
) -> None:
    from feddx.data.sources import load_cases

    source, folder = spec.split(":")
    path = shared_data / folder
    if source == "fhir":
        path = next(p for p in sorted(path.iterdir()) if p.is_dir())
    cases = load_cases(f"{source}:{path}", purpose="split").cases
    train, test = stratified_split(cases, fraction, 0)
    assert not _overlap(train, test)
    assert len(test) >= 0.6 * fraction * len(cases)
    assert "grouped by patient" in split_grouping(cases)
