"""Free-text CSV loader: header detection, label normalisation and coding, optional columns,
skip-and-report of malformed rows, streaming, and the Symptom2Disease release."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.sources import load_source, source_names
from feddx.data.text_csv import load_text_csv
from feddx.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "csv"


def _load(path: Path) -> tuple[list[Case], LoadReport]:
    report = LoadReport("csv")
    return list(load_text_csv(path, report)), report


def test_registered_as_csv_source() -> None:
    assert "csv" in source_names()
    cases = list(load_source("csv", FIXTURES / "symptoms_small.csv"))
    assert len(cases) == 7


def test_header_synonyms_bom_crlf_and_multiline_text() -> None:
    # Header "Disease,Symptoms" with a UTF-8 BOM and CRLF line ends; row 3 spans two lines.
    cases, report = _load(FIXTURES / "symptoms_small.csv")
    assert report.n_skipped == 0 and report.n_cases == 7
    assert cases[1].text is not None and "\n" in cases[1].text
    # Ids name the file and the line the record starts on (the multi-line record takes 3-4).
    assert [c.case_id for c in cases] == [f"symptoms_small-{n}" for n in (2, 3, 5, 6, 7, 8, 9)]
    assert {c.source for c in cases} == {"csv"}


def test_label_spellings_become_one_label_with_its_code() -> None:
    cases, _ = _load(FIXTURES / "symptoms_small.csv")
    labels = Counter((c.label.diagnosis, c.label.icd10) for c in cases if c.label)
    assert labels == {
        ("Drug reaction", "T88.7"): 3,  # "drug reaction", "Drug Reaction", "  DRUG   reaction "
        ("Common cold", "J00"): 2,
        ("GERD", "K21.9"): 1,
        ("Hand foot and mouth disease", None): 1,  # not in the curated map: no code, kept
    }


def test_malformed_rows_are_skipped_with_file_line_and_reason() -> None:
    cases, report = _load(FIXTURES / "malformed.csv")
    assert [c.case_id for c in cases] == ["malformed-2", "malformed-8"]
    assert [(s.file, s.line, s.reason) for s in report.skipped] == [
        ("malformed.csv", 3, "missing text"),
        ("malformed.csv", 4, "empty label"),
        ("malformed.csv", 5, "too many columns"),
        ("malformed.csv", 6, "too few columns"),
    ]
    assert report.skipped_reasons() == {
        "missing text": 1,
        "empty label": 1,
        "too many columns": 1,
        "too few columns": 1,
    }
    assert str(report.skipped[2]) == "malformed.csv:5: too many columns (expected 2, got 4)"
    # Messages never quote the row's text.
    assert not any("chills" in str(s) for s in report.skipped)


def test_optional_columns_and_invalid_values() -> None:
    cases, report = _load(FIXTURES / "extra_columns.csv")
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == ["a1", "a2", "a7"]
    a1, a2, a7 = by_id["a1"], by_id["a2"], by_id["a7"]
    assert (a1.age, a1.sex, a1.institution, a1.region) == (64, "female", "Hospital Norte", "North")
    assert a1.label is not None and a1.label.icd10 == "J18.9"  # from the curated map
    assert a2.label is not None and a2.label.icd10 == "J18.9"  # explicit "j18.9", normalised
    assert a7.label is not None and a7.label.icd10 == "J45.909" and a7.sex == "female"
    assert [(s.line, s.reason) for s in report.skipped] == [
        (4, "invalid value"),  # age "not-a-number"
        (5, "invalid value"),  # sex "X"
        (6, "invalid ICD-10 code"),
        (7, "duplicate case id"),  # a1 again
        (8, "invalid value"),  # age 200 fails the schema's range
    ]
    assert "age" in report.skipped[0].detail and "age" in report.skipped[4].detail
    assert "not-a-number" not in str(report.skipped[0])


def test_a_file_without_label_and_text_header_is_one_clear_error() -> None:
    with pytest.raises(DataError) as err:
        _load(FIXTURES / "no_header.csv")
    message = str(err.value)
    assert message.startswith(str(FIXTURES / "no_header.csv"))
    assert "no label column (one of label, diagnosis, disease)" in message
    assert "no text column (one of text, symptoms, description)" in message
    assert "'Migraine'" in message  # short header cells are named ...
    assert "pounding" not in message  # ... long ones (patient text) are not
    assert "chars>" in message


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        _load(tmp_path / "empty.csv")


def test_a_directory_loads_every_csv_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("label,text\nMalaria,Fever every other day.\n")
    (tmp_path / "a.csv").write_text("LABEL,TEXT\nDengue,Fever and pain behind the eyes.\n")
    (tmp_path / "notes.txt").write_text("not a csv")
    cases, _ = _load(tmp_path)
    assert [c.case_id for c in cases] == ["a-2", "b-2"]


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.csv files"):
        _load(tmp_path)


def test_a_missing_path_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="path not found"):
        list(load_source("csv", tmp_path / "nope.csv"))


def test_rows_stream_and_a_non_utf8_file_stops_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    good = "".join(f"Malaria,Fever number {i}.\n" for i in range(2000))
    path.write_bytes(
        b"label,text\n" + good.encode() + "Dengue,Febre e dor atrás dos olhos\n".encode("cp1252")
    )
    cases = load_text_csv(path, LoadReport("csv"))
    assert isinstance(cases, Iterator)
    first = next(cases)  # available before the bad bytes at the end are read
    assert first.case_id == "latin1-2"
    with pytest.raises(DataError, match=r"latin1\.csv: not UTF-8 text near line \d+"):
        list(cases)


def test_symptom2disease_release(shared_data: Path) -> None:
    cases, report = _load(shared_data / "symptom2disease")
    assert len(cases) == 870 and report.n_skipped == 0
    labels = Counter(c.label.diagnosis for c in cases if c.label)
    assert len(labels) == 24
    # Every label is coded, and mixed-case spellings in the file did not split any label.
    assert all(c.label is not None and c.label.icd10 for c in cases)
    assert len({label.lower() for label in labels}) == 24
    assert labels["Drug reaction"] == 38 and labels["Common cold"] == 37
