"""eICU-CRD loader: one case per ICU unit stay, labelled with the stay's primary diagnosis.

The fixture (``tests/fixtures/eicu``) is a hand-written miniature of the eICU tables with the
real headers: one patient with four stays over two hospitalization years, "> 89" ages, a
hospital missing from hospital.csv, a blank region, and malformed rows in every table.
"""

from __future__ import annotations

import collections
import gzip
import json
import shutil
from pathlib import Path

import pytest

from feddx.data.eicu import (
    EICUOptions,
    eicu_diagnosis_name,
    eicu_icd10,
    load_eicu,
    parse_eicu_age,
)
from feddx.data.icd10 import icd10_levels, lookup_icd10
from feddx.data.report import LoadReport
from feddx.data.schema import Case, Finding
from feddx.data.sources import load_source, source_names
from feddx.errors import DataError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eicu"
TABLES = ("hospital", "patient", "diagnosis", "admissiondx", "pasthistory", "allergy", "note")


def load(path: Path = FIXTURE, **options: object) -> tuple[dict[str, Case], LoadReport]:
    report = LoadReport("eicu")
    cases = list(load_eicu(path, report, EICUOptions(**options)))  # type: ignore[arg-type]
    assert report.n_cases == len(cases)
    return {c.case_id: c for c in cases}, report


def finding(case: Case, name: str) -> Finding:
    matches = [f for f in case.findings if f.name == name]
    assert len(matches) == 1, f"{name!r} in {[f.name for f in case.findings]}"
    return matches[0]


# --- naming and coding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (
            "cardiovascular|ventricular disorders|congestive heart failure",
            "Congestive heart failure",
        ),
        # qualifiers below the diagnosis level do not split the label
        ("cardiovascular|shock / hypotension|sepsis|severe", "Sepsis"),
        ("pulmonary|pulmonary infections|pneumonia|community-acquired|bacterial", "Pneumonia"),
        (
            "cardiovascular|arrhythmias|atrial fibrillation|with rapid ventricular response",
            "Atrial fibrillation",
        ),
        (
            "infectious diseases|systemic/other infections|sepsis|sepsis with multi-organ dysfunction",
            "Sepsis",
        ),
        # a child naming a subtype of the parent is the diagnosis
        (
            "neurologic|disorders of vasculature|stroke|hemorrhagic stroke|left sided",
            "Hemorrhagic stroke",
        ),
        (
            "hematology|red blood cell disorders|anemia|acute blood loss anemia",
            "Acute blood loss anemia",
        ),
        ("cardiovascular|arrhythmias|AV block|complete heart block", "Complete heart block"),
        (
            "gastrointestinal|intestinal disease|GI obstruction / ileus|small bowel obstruction",
            "Small bowel obstruction",
        ),
        (
            "cardiovascular|chest pain / ASHD|acute coronary syndrome|acute myocardial infarction (with ST elevation)|anterior wall",
            "Acute myocardial infarction (with ST elevation)",
        ),
        (
            "cardiovascular|chest pain / ASHD|acute coronary syndrome|s/p PTCA",
            "Acute coronary syndrome",
        ),
        # acronyms and "s/p" keep eICU's spelling
        ("endocrine|glucose metabolism|DKA", "DKA"),
        ("surgery|cardiac surgery|s/p CABG < 7 days", "s/p CABG < 7 days"),
        ("cardiovascular|arrhythmias", "Arrhythmias"),
    ],
)
def test_diagnosis_name_is_the_diagnosis_level_of_the_path(path: str, name: str) -> None:
    assert eicu_diagnosis_name(path) == name


def test_empty_diagnosis_path_is_an_error() -> None:
    with pytest.raises(ValueError):
        eicu_diagnosis_name(" | ")


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ("428.0, I50.9", "I50.9"),
        ("427.81, 410.41, I21.19, R00.1", "I21.19"),  # the first ICD-10 code
        ("E980.2, 965.00, T40.60", "T40.60"),  # ICD-9 external-cause E codes are not ICD-10
        ("276.2, E87.2", "E87.2"),  # ...but ICD-10 chapter IV E codes are
        ("V08", None),  # ICD-9 supplementary V code
        ("518.82", None),
        ("", None),
    ],
)
def test_icd10_is_read_from_the_mixed_icd9_field(field: str, code: str | None) -> None:
    assert eicu_icd10(field) == code


def test_age_top_band_and_blanks() -> None:
    assert parse_eicu_age("> 89") == 90
    assert parse_eicu_age("67") == 67
    assert parse_eicu_age("") is None
    for bad in ("abc", "-3", "200"):
        with pytest.raises(ValueError):
            parse_eicu_age(bad)


# --- the fixture ------------------------------------------------------------------------------


def test_fixture_loads_one_case_per_labelled_stay_and_counts_every_skip() -> None:
    cases, report = load()
    assert sorted(cases) == [f"eicu-{i}" for i in (101, 102, 103, 104, 106, 110, 111)]
    assert report.skipped_reasons() == {
        "invalid hospitalid": 1,
        "invalid age": 1,
        "wrong number of columns": 1,
        "duplicate patientunitstayid": 1,
        "invalid value dropped": 1,
        "invalid diagnosisoffset": 1,
        "unknown patientunitstayid": 1,
        "empty diagnosisstring": 1,
        "invalid admitdxenteredoffset": 1,
        "invalid noteoffset": 1,
        "no primary diagnosis": 1,
    }
    where = {str(s) for s in report.skipped}
    assert "patient.csv:8: invalid age (column age is not a number of years)" in where
    assert "patient.csv:10: duplicate patientunitstayid (stay 101)" in where
    assert "patient.csv:11: invalid value dropped (column admissionweight)" in where
    assert (
        "diagnosis.csv:15: invalid diagnosisoffset (column diagnosisoffset is not an integer)"
        in where
    )
    assert "patient.csv:6: no primary diagnosis (stay 105)" in where
    # never the text of a row
    assert not any("pulmonary" in s.lower() or "heavy" in s for s in where)


def test_stay_demographics_institution_and_region() -> None:
    cases, _ = load()
    first = cases["eicu-101"]
    assert first.age == 90 and first.sex == "female"  # "> 89"
    assert first.patient_id == "001-1" and first.source == "eicu"
    assert first.institution == "eICU hospital 1" and first.region == "Midwest"
    assert cases["eicu-103"].region == "South"
    # hospital 99 is not in hospital.csv: the institution is still named, the region unknown
    unknown = cases["eicu-106"]
    assert unknown.institution == "eICU hospital 99" and unknown.region is None
    assert unknown.age is None and unknown.sex is None


def test_label_is_the_earliest_primary_diagnosis_with_one_code_per_label() -> None:
    cases, _ = load()
    labels = {cid: (c.label.diagnosis, c.label.icd10) for cid, c in cases.items() if c.label}
    assert labels["eicu-101"] == ("Congestive heart failure", "I50.9")
    # "|systolic" carries I50.20, but the label's code is that of plain CHF
    assert labels["eicu-102"] == ("Congestive heart failure", "I50.9")
    assert labels["eicu-103"] == ("Hemorrhagic stroke", "I61.9")
    assert labels["eicu-104"] == ("Pneumonia", "J18.9")  # not aspiration's J69.0
    assert labels["eicu-106"] == ("Sepsis", "A41.9")  # not severe sepsis's R65.20
    # no ICD-10 in the data: the curated map's code (or none)
    assert labels["eicu-110"] == ("s/p CABG < 7 days", lookup_icd10("s/p CABG < 7 days"))
    # earliest primary (offset 30) wins over pneumonia at 200
    assert labels["eicu-111"] == ("Acute myocardial infarction (no ST elevation)", "I21.4")


def test_findings_come_from_admission_data_only() -> None:
    cases, _ = load()
    chf = cases["eicu-101"]
    names = [f.name for f in chf.findings]
    assert names[:3] == ["admission diagnosis", "admission type", "admission organ system"]
    assert finding(chf, "admission diagnosis").value == "CHF, congestive heart failure"
    assert finding(chf, "admission type").value == "non-operative"
    # reported present first, denied later: present wins
    assert finding(chf, "chest pain") == Finding(name="chest pain")
    assert finding(chf, "fevers").negated
    assert finding(chf, "pulmonary symptoms").negated
    assert finding(chf, "smoking").negated
    assert finding(chf, "alcohol use").value == "heavy"
    assert "family history of CAD" in names
    assert finding(chf, "weight") == Finding(name="weight", value=70.5, unit="kg")
    assert finding(chf, "ICU type").value == "Med-Surg ICU"
    assert finding(chf, "admitted from").value == "Emergency Department"
    # deduplicated, in entry order; "see cerner" is not an allergen; drugname as fallback
    assert finding(chf, "allergies").value == "codeine phosphate, penicillin g benzathine"
    # denied symptoms go last (dropped first when a prompt is over budget)
    assert all(f.negated for f in chf.findings[names.index("allergies") + 1 :])
    # other diagnosis.csv entries of the stay (sepsis, acute renal failure) are not findings
    text = json.dumps([f.model_dump() for f in chf.findings]).lower()
    assert "sepsis" not in text and "renal failure" not in text
    assert "copies" not in text  # note layout options are not findings


def test_admissiondx_answers_become_findings() -> None:
    cases, _ = load()
    cabg = cases["eicu-110"]
    assert finding(cabg, "admission type").value == "operative"  # from the O.R. question
    assert finding(cabg, "elective admission") == Finding(name="elective admission")
    assert finding(cabg, "pre-op ejection fraction") == Finding(
        name="pre-op ejection fraction", value=55.0, unit="%"
    )
    assert finding(cabg, "number of grafts performed").value == 3.0
    assert not [f for f in cabg.findings if f.name == "weight"]  # "heavy" was dropped
    mi = cases["eicu-111"]
    assert finding(mi, "thrombolytic therapy received within 24 hours").negated
    assert finding(mi, "acute MI location").value == "inferior"
    assert finding(mi, "transferred from another hospital within 48 h").value is None
    assert not [f for f in mi.findings if f.name == "elective admission"]  # bad offset row
    # an empty apacheadmissiondx falls back to admissiondx.csv
    assert finding(cases["eicu-106"], "admission diagnosis").value == "Sepsis, pulmonary"
    assert not [f for f in cases["eicu-104"].findings if f.name == "weight"]  # 0 kg


def test_past_history_becomes_readable_prior_conditions() -> None:
    cases, _ = load()
    assert cases["eicu-101"].history.prior_conditions == (
        "COPD - moderate",
        "CHF - class II",
        "cancer-primary site: breast",
        "myocardial infarction: multiple",
        "s/p renal transplant",
        "non-insulin dependent diabetes: medication dependent",
    )


def test_history_holds_only_stays_known_to_be_earlier() -> None:
    cases, _ = load()

    def earlier(cid: str) -> list[tuple[str | None, str | None, tuple[str, ...]]]:
        return [(e.kind, e.reason, e.diagnoses) for e in cases[cid].history.encounters]

    first_stay = (
        "Med-Surg ICU",
        "CHF, congestive heart failure",
        ("Congestive heart failure", "Acute renal failure"),
    )
    assert earlier("eicu-101") == []
    assert earlier("eicu-102") == [first_stay]  # same hospitalization, unit visit 1
    second = ("Cardiac ICU", "CHF, congestive heart failure", ("Congestive heart failure",))
    # 2015 hospitalizations: both 2014 stays precede them, oldest first ...
    assert earlier("eicu-103") == [first_stay, second]
    # ... but two hospitalizations discharged in 2015 have no known order
    assert earlier("eicu-104") == [first_stay, second]
    assert cases["eicu-102"].history.encounters[0].institution == "eICU hospital 1"
    readmit = cases["eicu-102"]
    assert finding(readmit, "ICU stay type").value == "stepdown/other"
    assert finding(readmit, "reason for readmission").value == "new clinical problem"

    alone, _ = load(same_hospitalization_history=False)
    assert alone["eicu-102"].history.encounters == ()
    assert len(alone["eicu-103"].history.encounters) == 2
    capped, _ = load(max_history_encounters=1)
    assert [e.kind for e in capped["eicu-103"].history.encounters] == ["Cardiac ICU"]


def test_keep_unlabeled_yields_stays_without_a_primary_diagnosis() -> None:
    cases, report = load(keep_unlabeled=True)
    assert cases["eicu-105"].label is None
    assert cases["eicu-105"].region is None  # hospital 3 has a blank region
    assert "no primary diagnosis" not in report.skipped_reasons()


def test_gzipped_tables_load_like_plain_ones(tmp_path: Path) -> None:
    for table in TABLES:
        with (
            (FIXTURE / f"{table}.csv").open("rb") as src,
            gzip.open(tmp_path / f"{table}.csv.gz", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    gz_cases, gz_report = load(tmp_path)
    cases, report = load()
    assert gz_cases == cases
    assert gz_report.skipped_reasons() == report.skipped_reasons()


def test_registered_as_a_source() -> None:
    assert "eicu" in source_names()
    cases = list(load_source("eicu", FIXTURE))
    assert len(cases) == 7


# --- unreadable input: one DataError naming the file -------------------------------------------


def copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "eicu"
    shutil.copytree(FIXTURE, target)
    return target


def test_missing_table_names_the_file(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    (path / "allergy.csv").unlink()
    with pytest.raises(DataError, match=r"allergy\.csv"):
        load_eicu(path, LoadReport("eicu"))


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory"):
        load_eicu(FIXTURE / "patient.csv", LoadReport("eicu"))


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    lines = (path / "patient.csv").read_text().splitlines()
    lines[0] = lines[0].replace(",age,", ",years,")
    (path / "patient.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"patient\.csv.*missing column\(s\) age"):
        list(load_eicu(path, LoadReport("eicu")))


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    with (path / "note.csv").open("ab") as f:
        f.write(b"11,101,1,1,Admission,notes/x,\xff\xfe,\n")
    with pytest.raises(DataError, match=r"note\.csv: line 12 is not UTF-8"):
        list(load_eicu(path, LoadReport("eicu")))


def test_cli_stats_json(capsys: pytest.CaptureFixture[str]) -> None:
    from feddx.cli import main

    assert main(["data", "stats", "eicu", str(FIXTURE), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_cases"] == 7 and stats["n_skipped"] == 11
    assert stats["labels"]["Congestive heart failure"] == 2
    assert stats["regions"] == {"South": 4, "Midwest": 2}


# --- the real eICU demo (../shared/data/eicu_demo) --------------------------------------------


@pytest.fixture(scope="module")
def demo(shared_data: Path) -> tuple[list[Case], LoadReport]:
    path = shared_data / "eicu_demo"
    if not path.is_dir():
        pytest.skip(f"eICU demo not available at {path}")
    report = LoadReport("eicu")
    return list(load_eicu(path, report)), report


def test_demo_every_stay_loads_or_is_skipped_for_a_counted_reason(
    demo: tuple[list[Case], LoadReport],
) -> None:
    cases, report = demo
    # 2,016 unit stays: 1,370 have a primary diagnosis, 646 have none; no row is malformed
    assert len(cases) == 1370
    assert report.skipped_reasons() == {"no primary diagnosis": 646}
    assert len({c.case_id for c in cases}) == len(cases)
    assert all(c.label is not None and c.findings for c in cases)


def test_demo_institutions_regions_and_labels(demo: tuple[list[Case], LoadReport]) -> None:
    cases, _ = demo
    institutions = {c.institution for c in cases}
    assert 150 < len(institutions) <= 186 and None not in institutions
    regions = collections.Counter(c.region for c in cases)
    assert set(regions) == {"Midwest", "South", "West", "Northeast", None}
    assert regions[None] < 0.15 * len(cases)  # hospitals with a blank region
    labels = collections.Counter(c.label.diagnosis for c in cases if c.label)
    assert 150 < len(labels) < 300
    assert [name for name, _ in labels.most_common(3)] == ["Sepsis", "Pneumonia", "DKA"]
    assert max(c.age or 0 for c in cases) == 90
    assert sum(bool(c.history.prior_conditions) for c in cases) > 1000
    assert sum(bool(c.history.encounters) for c in cases) > 100


def test_demo_labels_have_one_valid_code_and_do_not_leak(
    demo: tuple[list[Case], LoadReport],
) -> None:
    cases, _ = demo
    codes: dict[str, set[str | None]] = collections.defaultdict(set)
    for c in cases:
        assert c.label is not None
        codes[c.label.diagnosis].add(c.label.icd10)
        # the APACHE admission diagnosis may coincide with the label ("Pancreatitis"): it is
        # the reason for admission; nothing else may carry the label's name
        for f in c.findings:
            if f.name != "admission diagnosis":
                assert c.label.diagnosis.lower() not in (f.name.lower(), str(f.value).lower())
    assert all(len(v) == 1 for v in codes.values())
    coded = [next(iter(v)) for v in codes.values() if next(iter(v))]
    assert len(coded) > 0.6 * len(codes)
    assert all(icd10_levels(code).chapter for code in coded if code)
