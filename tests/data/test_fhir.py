"""FHIR R4 loader: Bundles and bulk NDJSON into cases with history, place and de-identified text.

The fixtures (``tests/fixtures/fhir``, written by ``build_fixtures.py`` there) hold three
fictitious patients: A in a Bundle (three encounters, a base64 note naming her, an invalid
Condition), B and C in a bulk-export folder (a bad JSON line, dangling references, a wrong
resourceType, an unused resource type).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

from feddx.data.fhir import (
    FHIRLoadOptions,
    FHIRLoadStats,
    TextRedactor,
    load_fhir,
    note_for_case,
)
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.sources import load_source
from feddx.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
BUNDLE = FIXTURES / "bundle" / "patient_a.json"
BULK = FIXTURES / "bulk"
PATIENT_A_IDENTIFIERS = [
    "Maria",
    "Souza",
    "Maria Clara Souza",
    "MRN-448812",
    "999-12-3456",
    "555-201-9988",
    "maria.souza@example.org",
    "12 Rua das Flores",
    "Campinas",
    "13083-970",
]


class RecordingRedactor:
    """Stands in for feddx.data.deid.Deidentifier: replaces the given identifiers, records them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def redact_text(self, text: str, extra_identifiers: Sequence[str] = ()) -> str:
        self.calls.append(tuple(extra_identifiers))
        for ident in sorted(extra_identifiers, key=len, reverse=True):
            text = text.replace(ident, "[ID]")
        return text


def load(
    path: Path,
    options: FHIRLoadOptions | None = None,
    redactor: TextRedactor | Literal["recording"] | None = "recording",
) -> tuple[dict[str, Case], LoadReport, FHIRLoadStats]:
    """Load with a :class:`RecordingRedactor` by default; ``redactor=None`` lets the loader
    import ``feddx.data.deid`` itself."""
    report, stats = LoadReport("fhir"), FHIRLoadStats()
    if redactor == "recording":
        redactor = RecordingRedactor()
    cases = list(load_fhir(path, report, options=options, stats=stats, redactor=redactor))
    assert report.n_cases == len(cases) == stats.cases
    return {c.case_id: c for c in cases}, report, stats


def skipped(report: LoadReport) -> set[tuple[str, int | None, str]]:
    return {(s.file, s.line, s.reason) for s in report.skipped}


# --- one case per encounter ----------------------------------------------------------------------


def test_bundle_gives_one_labeled_case_per_diagnosed_encounter() -> None:
    cases, report, stats = load(BUNDLE)

    assert sorted(cases) == ["enc-a1", "enc-a2"]
    a1, a2 = cases["enc-a1"], cases["enc-a2"]
    assert a1.label is not None and a2.label is not None
    # ICD-10 from the coding when one has an ICD-10 system; the name from code.text.
    assert (a1.label.diagnosis, a1.label.icd10) == ("Essential hypertension", "I10")
    # SNOMED semantic tag stripped from the display name.
    assert a2.label.diagnosis == "Acute bronchitis"
    assert (a2.patient_id, a2.sex, a2.age, str(a2.date)) == ("pat-a", "female", 50, "2021-03-05")
    assert a2.source == "fhir"
    # enc-a3 has only a finding-type Condition ("Stress (finding)"): no diagnosis, skipped.
    assert ("patient_a.json", 166, "no diagnosis") in skipped(report)
    assert stats.encounters == 3 and stats.labeled == 2


def test_icd10_falls_back_to_the_terminology_lookup_for_snomed_only_conditions() -> None:
    import feddx.data.icd10 as icd10

    cases, _, _ = load(BUNDLE)
    label = cases["enc-a2"].label
    assert label is not None and label.icd10 == icd10.lookup_icd10("Acute bronchitis")


def test_earlier_encounters_prior_conditions_and_active_medications_become_history() -> None:
    cases, _, stats = load(BUNDLE)
    first, second = cases["enc-a1"], cases["enc-a2"]

    assert first.history.is_empty()
    h = second.history
    assert [(str(e.date), e.kind, e.diagnoses, e.institution) for e in h.encounters] == [
        (
            "2020-01-10",
            "Encounter for check up",
            ("Essential hypertension",),
            "Hospital Santa Clara",
        )
    ]
    assert h.prior_conditions == ("Essential hypertension",)
    assert h.medications == ("lisinopril 10 MG Oral Tablet",)
    assert stats.with_history == 1


def test_medications_are_those_still_active_at_the_encounter() -> None:
    cases, _, _ = load(BULK)
    # Atorvastatin: status active. Amoxicillin: stopped, written 5 months before (within the
    # 365-day window). Not: metformin (stopped 3 years before), prednisone (validity ended),
    # azithromycin (prescribed at this very encounter: treatment, not history).
    assert set(cases["enc-b2"].history.medications) == {
        "Atorvastatin 20 MG Oral Tablet",
        "Amoxicillin 500 MG Oral Capsule",
    }
    # A Condition without an encounter is still prior history, by its onset date.
    assert cases["enc-b1"].history.prior_conditions == ("Hypertension",)


def test_history_is_capped_to_the_most_recent_encounters() -> None:
    cases, _, _ = load(BUNDLE, FHIRLoadOptions(unlabeled="keep", max_history_encounters=1))
    assert [str(e.date) for e in cases["enc-a3"].history.encounters] == ["2021-03-05"]


def test_findings_hold_visit_observations_finding_conditions_and_procedures() -> None:
    cases, _, _ = load(BUNDLE)
    found = {(f.name, f.value, f.unit, f.negated) for f in cases["enc-a2"].findings}

    assert ("visit", "emergency visit", None, False) in found
    assert ("Fever", None, None, False) in found  # "Fever (finding)" is a finding, not a label
    assert ("Systolic blood pressure", 150, "mm[Hg]", False) in found  # components, one each
    assert ("Diastolic blood pressure", 95, "mm[Hg]", False) in found
    assert ("Body temperature", 38.4, "Cel", False) in found
    assert ("Current smoker", None, None, True) in found  # valueBoolean false
    assert ("Plain chest X-ray", "performed", None, False) in found
    found_b = {f.name for f in load(BULK)[0]["enc-b2"].findings}
    # No encounter reference, but taken during enc-b2; the not-done procedure is left out.
    assert "Oxygen saturation in Arterial blood" in found_b
    assert "Bronchoscopy" not in found_b


def test_institution_and_region_come_from_the_organization() -> None:
    cases, _, _ = load(BUNDLE, FHIRLoadOptions(unlabeled="keep"))
    # enc-a1: conditional reference Organization?identifier=system|value.
    assert (cases["enc-a1"].institution, cases["enc-a1"].region) == ("Hospital Santa Clara", "RJ")
    # enc-a2: no serviceProvider; the Location's managing organization (via a urn:uuid fullUrl).
    assert (cases["enc-a2"].institution, cases["enc-a2"].region) == ("Hospital Santa Clara", "RJ")
    # enc-a3: provider not in the export: its display, and the patient's state.
    assert (cases["enc-a3"].institution, cases["enc-a3"].region) == ("Clinica Vila Nova", "SP")
    city = load(BUNDLE, FHIRLoadOptions(region_level="city"))[0]["enc-a1"]
    assert city.region == "Rio De Janeiro, RJ"


# --- notes and privacy ---------------------------------------------------------------------------


def test_base64_note_is_decoded_cut_before_the_assessment_and_redacted() -> None:
    redactor = RecordingRedactor()
    cases, _, stats = load(BUNDLE, redactor=redactor)
    text = cases["enc-a2"].text
    assert text is not None

    assert "Productive cough and fever since Tuesday." in text
    assert "Supportive care" not in text and "Assessment" not in text  # the answer is cut
    for ident in PATIENT_A_IDENTIFIERS:
        assert ident not in text
    # The patient's own names, identifiers, address and contacts are passed to the redactor.
    assert set(PATIENT_A_IDENTIFIERS) <= set(redactor.calls[0])
    assert stats.notes == 1


def test_free_text_reasons_and_string_observations_are_redacted_too() -> None:
    cases, _, _ = load(BUNDLE)
    values = {f.name: f.value for f in cases["enc-a2"].findings}
    assert values["reason for visit"] == "Cough; brought in by her daughter, [ID]'s neighbour"
    assert values["Patient-reported symptom"] == "[ID] says her chest feels tight"


def test_no_case_field_carries_the_patient_name() -> None:
    cases, _, _ = load(BUNDLE, FHIRLoadOptions(unlabeled="keep", granularity="encounter"))
    cases_b, _, _ = load(BULK)
    dumped = " ".join(c.model_dump_json() for c in [*cases.values(), *cases_b.values()])
    for name in ("Maria", "Souza", "John", "Quincy", "Public", "617-555-0199", "Campinas"):
        assert name not in dumped


def test_notes_are_dropped_and_reported_when_no_deidentifier_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "feddx.data.deid", None)  # import now fails
    cases, report, _ = load(BUNDLE, redactor=None)

    a2 = cases["enc-a2"]
    assert a2.text is None
    assert "reason for visit" not in {f.name for f in a2.findings}
    assert ("patient_a.json", 494, "note not de-identified") in skipped(report)


def test_deidentify_false_keeps_the_note_verbatim_except_the_assessment() -> None:
    cases, _, _ = load(
        BUNDLE, FHIRLoadOptions(deidentify=False, strip_assessment=False), redactor=None
    )
    text = cases["enc-a2"].text or ""
    assert "Maria Clara Souza" in text and "Supportive care" in text


def test_ages_over_89_are_capped_at_90_when_deidentifying() -> None:
    assert load(BULK)[0]["enc-c1"].age == 90
    assert load(BULK, FHIRLoadOptions(deidentify=False))[0]["enc-c1"].age == 95


def test_real_deidentifier_removes_the_patients_identifiers() -> None:
    import feddx.data.deid as deid

    cases, _, _ = load(BUNDLE, redactor=deid.Deidentifier())
    text = cases["enc-a2"].text or ""
    assert "Productive cough" in text
    for ident in PATIENT_A_IDENTIFIERS:
        assert ident not in text


def test_note_for_case_cuts_at_the_first_conclusion_heading() -> None:
    note = "Chief complaint: cough\n\n\nExam: crackles   \nImpression: pneumonia\nPlan: antibiotics"
    assert note_for_case(note) == "Chief complaint: cough\nExam: crackles"
    assert note_for_case("A/P: pneumonia") == ""
    assert "Planned" in note_for_case("Planned follow-up in clinic")  # "Plan" only as a word


# --- bulk NDJSON, invalid records, granularity ------------------------------------------------


def test_bulk_ndjson_loads_and_reports_every_bad_record_with_file_line_and_reason() -> None:
    cases, report, stats = load(BULK)

    assert sorted(cases) == ["enc-b1", "enc-b2", "enc-c1"]
    assert skipped(report) == {
        ("Encounter.000.ndjson", 2, "invalid JSON"),
        ("Encounter.000.ndjson", 5, "dangling reference"),  # subject Patient/ghost
        ("Encounter.000.ndjson", 6, "undated encounter"),
        ("Condition.000.ndjson", 3, "dangling reference"),  # Encounter/nope
        ("Condition.000.ndjson", 4, "wrong resourceType"),  # an Observation in Condition file
        ("Condition.000.ndjson", 5, "wrong resourceType"),  # "Conditionn"
        ("Condition.000.ndjson", 7, "invalid resource"),  # onset 2019-13-45
        ("Condition.000.ndjson", 9, "dangling reference"),  # another patient's encounter
    }
    details = " ".join(s.detail for s in report.skipped)
    assert "onsetDateTime" in details and "2019-13-45" not in details  # no raw values
    # Unused types are counted, not reported as errors.
    assert stats.ignored["Immunization"] == 1 and stats.ignored["Procedure (not-done)"] == 1
    # The note is re-read from its NDJSON line: decoded, redacted, the ASSESSMENT cut.
    text = cases["enc-b2"].text or ""
    assert text.startswith("[ID] presented with productive cough")
    assert "pneumonia" not in text and "ignored" not in text  # text/html attachment skipped
    assert cases["enc-b1"].label is not None and cases["enc-b1"].label.icd10 == "E11.9"
    assert cases["enc-b2"].institution == "BOSTON GENERAL" and cases["enc-b2"].region == "MA"


def test_bundle_entry_errors_name_the_entry_line() -> None:
    _, report, _ = load(BUNDLE)
    (bad,) = [s for s in report.skipped if s.reason == "invalid resource"]
    lines = BUNDLE.read_text().splitlines()
    assert bad.line is not None and lines[bad.line - 1].strip() == "{"
    assert '"id": "bad-cond"' in "".join(lines[bad.line : bad.line + 6])
    assert bad.detail == "Condition: subject: Field required"


def test_a_directory_may_mix_bundles_and_ndjson(tmp_path: Path) -> None:
    shutil.copytree(BULK, tmp_path, dirs_exist_ok=True)
    shutil.copy(BUNDLE, tmp_path / BUNDLE.name)
    cases, _, stats = load(tmp_path)
    assert sorted(cases) == ["enc-a1", "enc-a2", "enc-b1", "enc-b2", "enc-c1"]
    assert stats.patients == 3


def test_unlabeled_encounters_can_be_kept() -> None:
    cases, report, stats = load(BUNDLE, FHIRLoadOptions(unlabeled="keep"))
    assert cases["enc-a3"].label is None
    assert [f.name for f in cases["enc-a3"].findings] == ["visit", "Stress"]
    assert "no diagnosis" not in report.skipped_reasons()
    assert (stats.labeled, stats.unlabeled) == (2, 1)


def test_patient_granularity_gives_one_case_per_patient_at_the_last_diagnosis() -> None:
    cases, _, _ = load(BULK, FHIRLoadOptions(granularity="patient"))
    assert sorted(cases) == ["pat-b", "pat-c"]
    b = cases["pat-b"]
    assert b.label is not None and b.label.diagnosis == "Community acquired pneumonia"
    assert [e.diagnoses for e in b.history.encounters] == [
        ("Type 2 diabetes mellitus without complications",)
    ]
    # Patient A's last encounter (enc-a3) has no diagnosis: her case is built at enc-a2.
    a = load(BUNDLE, FHIRLoadOptions(granularity="patient", unlabeled="keep"))[0]["pat-a"]
    assert a.label is not None and a.label.diagnosis == "Acute bronchitis"
    assert str(a.date) == "2021-03-05" and len(a.history.encounters) == 1


def test_finding_tags_can_be_turned_off_to_treat_every_condition_as_a_diagnosis() -> None:
    cases, _, _ = load(BUNDLE, FHIRLoadOptions(finding_tags=()))
    label = cases["enc-a3"].label
    assert label is not None and label.diagnosis == "Stress"


def test_registered_as_the_fhir_source_and_errors_on_an_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "feddx.data.deid", None)  # keep this test fast
    report = LoadReport("fhir")
    cases = list(load_source("fhir", BUNDLE, report))
    assert len(cases) == report.n_cases == 2
    with pytest.raises(DataError, match=r"no \.json or \.ndjson files"):
        list(load_fhir(tmp_path))


def test_a_non_bundle_json_document_and_broken_json_file(tmp_path: Path) -> None:
    bundle = json.loads(BUNDLE.read_text())
    (tmp_path / "patient.json").write_text(json.dumps(bundle["entry"][0]["resource"]))
    (tmp_path / "broken.json").write_text('{"resourceType": "Bundle",\n "entry": [}\n')
    cases, report, stats = load(tmp_path)
    assert cases == {} and stats.resources["Patient"] == 1
    assert skipped(report) == {("broken.json", 2, "invalid JSON")}


# --- the Synthea bulk sample in ../shared/data ---------------------------------------------------


@pytest.fixture(scope="module")
def synthea(
    request: pytest.FixtureRequest,
) -> tuple[dict[str, Case], LoadReport, FHIRLoadStats, Path]:
    shared: Path = request.getfixturevalue("shared_data")
    path = shared / "fhir" / "synthea_bulk_10_patients"
    if not path.is_dir():
        pytest.skip(f"Synthea FHIR sample not found at {path}")
    cases, report, stats = load(path)
    return cases, report, stats, path


def test_synthea_sample_yields_labeled_cases_with_history(
    synthea: tuple[dict[str, Case], LoadReport, FHIRLoadStats, Path],
) -> None:
    cases, report, stats, path = synthea
    n_patients = sum(1 for _ in (path / "Patient.000.ndjson").open())
    n_encounters = sum(1 for _ in (path / "Encounter.000.ndjson").open())

    assert stats.patients == n_patients and stats.encounters == n_encounters
    # Every encounter is either a case or skipped for having no diagnosis; nothing else fails.
    assert report.skipped_reasons() == {"no diagnosis": n_encounters - len(cases)}
    assert len(cases) >= 50 and stats.labeled == len(cases)
    assert stats.with_history >= 0.9 * len(cases)
    assert all(c.label is not None and not c.label.diagnosis.endswith(")") for c in cases.values())
    assert all(c.institution and c.region and c.age is not None and c.sex for c in cases.values())
    assert any(len(c.history.encounters) >= 5 and c.history.medications for c in cases.values())
    assert stats.notes == len(cases)
    assert not any("Assessment and Plan" in (c.text or "") for c in cases.values())


def test_synthea_cases_never_contain_patient_names(
    synthea: tuple[dict[str, Case], LoadReport, FHIRLoadStats, Path],
) -> None:
    cases, _, _, path = synthea
    names: set[str] = set()
    for line in (path / "Patient.000.ndjson").open():
        for name in json.loads(line).get("name", []):
            names.update([*name.get("given", []), name.get("family", "")])
    dumped = "\n".join(c.model_dump_json() for c in cases.values())
    assert names and not [n for n in names if n and n in dumped]
