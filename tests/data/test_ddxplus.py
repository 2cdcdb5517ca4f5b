"""DDXPlus loaders: every evidence decoded into a compact finding, one English label space for
both releases, every unusable row skipped with its file, line and the code at fault."""

from __future__ import annotations

import ast
import csv
import shutil
import statistics
import zipfile
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from feddx.data.csvio import FIELD_LIMIT
from feddx.data.ddxplus import (
    DDXPlusRelease,
    DDXPlusStats,
    ddxplus_candidates,
    ddxplus_icd10,
    load_ddxplus,
    load_ddxplus_v0,
)
from feddx.data.ddxplus_names import SHORT_NAMES, derive_finding_name, finding_name
from feddx.data.icd10 import icd10_levels
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.sources import load_source, source_names
from feddx.errors import DataError
from feddx.model.prompt import render_finding, render_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ddxplus"
EN, V0 = FIXTURES / "en", FIXTURES / "v0"


def _load(path: Path, v0: bool = False) -> tuple[list[Case], LoadReport, DDXPlusStats]:
    report, stats = LoadReport("test"), DDXPlusStats()
    loader = load_ddxplus_v0 if v0 else load_ddxplus
    return list(loader(path, report, stats=stats)), report, stats


def _findings(case: Case) -> list[str]:
    return [render_finding(f) for f in case.findings]


# --- decoding ------------------------------------------------------------------------------


def test_every_evidence_type_is_decoded_into_compact_findings() -> None:
    cases, _, _ = _load(EN)
    first = cases[0]
    assert first.case_id == "patients:2"
    assert (first.age, first.sex, first.source) == (34, "female", "ddxplus")
    # The initial evidence (headache) comes first with its follow-ups, then the other symptoms,
    # then the antecedents. Binary -> present; numeric scale -> number; multi-choice -> one
    # finding with every value (and the release's "palace" corrected to "palate"); Y/N meaning
    # -> present/negated.
    assert _findings(first) == [
        "headache",
        "how strong is the headache: 7",
        "where is the headache located: forehead, palate",
        "headache worse with light",
        "fever",
        "smokes cigarettes",
        "no been abroad in the last month",
    ]
    assert first.findings[1].value == 7  # numeric, not text


def test_follow_up_questions_stay_with_their_question_and_multi_values_merge() -> None:
    second = _load(EN)[0][1]
    assert second.sex == "male"
    assert _findings(second) == [
        "cough that keeps you awake",  # INITIAL_EVIDENCE
        "what color is your sputum: green",  # follows up the cough question
        "fever",
        "no headache worse with light",  # "N" value meaning -> negated
        "been abroad in the last month: Asia, Europe",  # antecedent, two values
    ]


def test_initial_evidence_missing_from_evidences_is_added_first() -> None:
    by_id = {c.case_id: c for c in _load(EN)[0]}
    infant = by_id["patients:19"]  # its EVIDENCES cell is double-quoted (literal_eval path)
    assert infant.age == 0
    assert _findings(infant) == ["cough that keeps you awake", "fever", "smokes cigarettes"]
    assert infant.require_label().differential == ()
    assert _findings(by_id["patients:21"]) == ["how strong is the headache: 3"]


def test_label_is_english_with_icd10_and_ranked_differential() -> None:
    label = _load(EN)[0][1].require_label()
    assert (label.diagnosis, label.icd10) == ("Pneumonia", "J17,J18")  # from "j17, j18"
    assert [(d.name, d.probability, d.icd10) for d in label.differential] == [
        ("Pneumonia", 0.75, "J17,J18"),
        ("Acute bronchitis", 0.25, "J20.9"),
    ]


def test_malformed_rows_are_skipped_with_file_line_and_code() -> None:
    cases, report, stats = _load(EN)
    assert report.n_cases == len(cases) == 4
    assert stats.rows == 21 and report.n_skipped == 17
    assert [(s.file, s.line, s.reason, s.detail) for s in report.skipped] == [
        ("patients.csv", 4, "invalid AGE", "column AGE: not a number"),
        ("patients.csv", 5, "invalid SEX", "column SEX: expected M or F"),
        (
            "patients.csv",
            6,
            "unknown pathology",
            "column PATHOLOGY: not in release_conditions.json",
        ),
        (
            "patients.csv",
            7,
            "invalid DIFFERENTIAL_DIAGNOSIS",
            "column DIFFERENTIAL_DIAGNOSIS: not a list of [name, probability] pairs",
        ),
        (
            "patients.csv",
            8,
            "unknown differential diagnosis",
            "DIFFERENTIAL_DIAGNOSIS entry 1: not in release_conditions.json",
        ),
        (
            "patients.csv",
            9,
            "invalid DIFFERENTIAL_DIAGNOSIS",
            "DIFFERENTIAL_DIAGNOSIS entry 1: probability outside 0-1",
        ),
        ("patients.csv", 10, "invalid EVIDENCES", "column EVIDENCES: not a list of evidence codes"),
        ("patients.csv", 11, "unknown evidence code", "EVIDENCES: E_99"),
        ("patients.csv", 12, "unknown evidence value", "EVIDENCES: E_5_@_V_77"),
        ("patients.csv", 13, "unexpected evidence value", "EVIDENCES: E_1 is binary"),
        ("patients.csv", 14, "missing evidence value", "EVIDENCES: E_4 needs a value"),
        ("patients.csv", 15, "wrong number of columns", "5 fields, header has 6"),
        ("patients.csv", 16, "unknown evidence code", "INITIAL_EVIDENCE: E_98"),
        ("patients.csv", 17, "several values for categorical evidence", "EVIDENCES: E_4"),
        ("patients.csv", 18, "conflicting evidence values", "EVIDENCES: E_8"),
        ("patients.csv", 20, "unknown evidence value", "EVIDENCES: E_4_@_11"),
        ("patients.csv", 22, "initial evidence without value", "INITIAL_EVIDENCE: E_4"),
    ]
    # Skip details name columns and codes but never quote a patient's cell ("abc", "Gout").
    assert not any(word in str(s) for s in report.skipped for word in ("abc", "Gout", "1.5"))


def test_stats_count_every_decoded_evidence() -> None:
    cases, _, stats = _load(EN)
    assert stats.evidences == 8 + 6 + 2 + 1  # EVIDENCES entries of the 4 loaded rows
    assert stats.findings == sum(len(c.findings) for c in cases) == 16
    assert stats.codes == {f"E_{i}" for i in range(1, 10)}
    assert stats.cases_per_file == Counter({"patients.csv": 4})


# --- the French release (v0) ---------------------------------------------------------------


def test_v0_decodes_french_codes_into_the_english_label_space() -> None:
    cases, report, _ = _load(V0, v0=True)
    assert [c.case_id for c in cases] == ["patients_v0:2", "patients_v0:3"]
    assert {c.source for c in cases} == {"ddxplus-v0"}
    assert _findings(cases[0]) == [
        "headache",
        "how strong is the headache: 7",
        "where is the headache located: forehead, palate",
        "fever",
        "smokes cigarettes",
        "no been abroad in the last month",
    ]
    label = cases[1].require_label()
    assert (label.diagnosis, label.icd10) == ("Pneumonia", "J17,J18")  # from "Pneumonie"
    assert [d.name for d in label.differential] == ["Pneumonia", "Acute bronchitis"]
    assert [(s.line, s.reason, s.detail) for s in report.skipped] == [
        (4, "unknown pathology", "column PATHOLOGY: not in release_conditions.json"),
        (5, "unknown evidence value", "EVIDENCES: voyage_@_Lune"),
    ]


def test_both_releases_share_candidates_and_icd10() -> None:
    assert ddxplus_candidates(EN) == ["Acute bronchitis", "Migraine", "Pneumonia"]
    assert ddxplus_candidates(V0) == ddxplus_candidates(EN)
    assert ddxplus_icd10(EN) == {
        "Acute bronchitis": "J20.9",
        "Migraine": "G43",
        "Pneumonia": "J17,J18",
    }
    assert ddxplus_icd10(V0) == ddxplus_icd10(EN)
    assert ddxplus_candidates(EN / "patients.csv") == ddxplus_candidates(EN)  # a file in the dir


def test_the_wrong_release_for_the_source_is_refused() -> None:
    with pytest.raises(DataError, match=r"French v0 release.*'ddxplus-v0'"):
        load_ddxplus(V0)
    with pytest.raises(DataError, match=r"English release.*'ddxplus'"):
        load_ddxplus_v0(EN)


def test_both_sources_are_registered() -> None:
    assert {"ddxplus", "ddxplus-v0"} <= set(source_names())
    assert len(list(load_source("ddxplus", EN))) == 4
    assert len(list(load_source("ddxplus-v0", V0))) == 2


# --- paths, archives, streaming ------------------------------------------------------------


def test_a_single_csv_reads_the_json_files_beside_it(tmp_path: Path) -> None:
    shutil.copytree(EN, tmp_path / "release")
    extra = tmp_path / "release" / "other.csv"
    extra.write_text((EN / "patients.csv").read_text(encoding="utf-8"), encoding="utf-8")
    assert len(_load(tmp_path / "release")[0]) == 8  # the directory: both CSVs
    only = _load(tmp_path / "release" / "other.csv")[0]
    assert [c.case_id for c in only][:2] == ["other:2", "other:3"]


def _official_layout(root: Path, zipped_json: bool) -> Path:
    """The release as published: ``release_test_patients.zip`` holding an extension-less CSV."""
    root.mkdir()
    with zipfile.ZipFile(root / "release_test_patients.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(EN / "patients.csv", "release_test_patients")
    for stem in ("release_conditions", "release_evidences"):
        if zipped_json:
            with zipfile.ZipFile(root / f"{stem}.zip", "w") as z:
                z.write(EN / f"{stem}.json", f"{stem}.json")
        else:
            shutil.copy(EN / f"{stem}.json", root)
    return root


@pytest.mark.parametrize("zipped_json", [False, True])
def test_the_official_zip_files_are_read_as_published(tmp_path: Path, zipped_json: bool) -> None:
    root = _official_layout(tmp_path / "ddxplus", zipped_json)
    plain = _load(EN)[0]
    for path in (root, root / "release_test_patients.zip"):
        cases, report, _ = _load(path)
        assert [c.case_id for c in cases] == [
            c.case_id.replace("patients:", "release_test_patients:") for c in plain
        ]
        assert [c.findings for c in cases] == [c.findings for c in plain]
        assert report.skipped[0].file == "release_test_patients.zip/release_test_patients"


def test_rows_are_streamed_not_read_up_front(tmp_path: Path) -> None:
    shutil.copytree(EN, tmp_path / "r")
    good = (EN / "patients.csv").read_bytes().splitlines(keepends=True)[:3]
    (tmp_path / "r" / "patients.csv").write_bytes(b"".join(good) + b"\xff\xfe broken\n")
    stream = load_ddxplus(tmp_path / "r")
    assert [c.case_id for c in islice(stream, 2)] == ["patients:2", "patients:3"]
    with pytest.raises(DataError, match=r"patients.csv: line 4 is not UTF-8 text"):
        next(stream)


def test_a_byte_order_mark_and_an_oversized_cell_are_handled(tmp_path: Path) -> None:
    root = _copy_without(tmp_path, "patients.csv")
    lines = (EN / "patients.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    # over the loaders' shared csv field-size cap (feddx.data.csvio.FIELD_LIMIT)
    huge = f"30,[],M,Migraine,\"['{'E_3' * (FIELD_LIMIT // 3 + 1)}']\",E_3\n"
    (root / "patients.csv").write_text("\ufeff" + lines[0] + huge + lines[1], encoding="utf-8")
    cases, report, _ = _load(root)
    assert [c.case_id for c in cases] == ["patients:3"]  # the header was recognised
    assert [(s.line, s.reason) for s in report.skipped] == [(2, "malformed CSV row")]


# --- whole-file errors ---------------------------------------------------------------------


def _copy_without(tmp_path: Path, name: str) -> Path:
    shutil.copytree(EN, tmp_path / "r")
    (tmp_path / "r" / name).unlink()
    return tmp_path / "r"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda t: t / "absent", "DDXPlus path not found"),
        (lambda t: _copy_without(t, "release_evidences.json"), "missing release_evidences.json"),
        (lambda t: _copy_without(t, "release_conditions.json"), "missing release_conditions.json"),
        (lambda t: _copy_without(t, "patients.csv"), "no DDXPlus patient files"),
        (lambda t: EN / "release_evidences.json", "is a JSON file"),
    ],
)
def test_an_unusable_path_is_one_clear_data_error(tmp_path: Path, setup: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_ddxplus(setup(tmp_path))


def test_invalid_json_names_the_file_and_position(tmp_path: Path) -> None:
    root = _copy_without(tmp_path, "release_evidences.json")
    (root / "release_evidences.json").write_text('{"E_1": {', encoding="utf-8")
    with pytest.raises(DataError, match=r"release_evidences.json: invalid JSON at line 1"):
        load_ddxplus(root)


def test_an_evidence_without_english_question_is_a_data_error(tmp_path: Path) -> None:
    root = _copy_without(tmp_path, "release_evidences.json")
    (root / "release_evidences.json").write_text(
        '{"E_1": {"data_type": "B", "question_fr": "Fièvre?"}}', encoding="utf-8"
    )
    with pytest.raises(DataError, match="evidence 'E_1' has no English question"):
        load_ddxplus(root)


def test_a_csv_without_the_ddxplus_columns_is_a_data_error(tmp_path: Path) -> None:
    root = _copy_without(tmp_path, "patients.csv")
    (root / "patients.csv").write_text("AGE,SEX\n30,M\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"missing column.*DIFFERENTIAL_DIAGNOSIS"):
        list(load_ddxplus(root))


def test_a_corrupt_zip_is_a_data_error(tmp_path: Path) -> None:
    root = _copy_without(tmp_path, "patients.csv")
    (root / "release_train_patients.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read zip archive"):
        load_ddxplus(root)


# --- finding names -------------------------------------------------------------------------


def test_curated_names_are_compact() -> None:
    assert finding_name("Do you have a fever (either felt or measured with a thermometer)?") == (
        "fever"
    )
    assert all(len(short) < len(q) for q, short in SHORT_NAMES.items())


@pytest.mark.parametrize(
    ("question", "name"),
    [
        ("Do you have a cough (dry or wet)?", "cough"),
        ("Have you ever had a stroke?", "stroke"),
        ("Are you infected with HIV?", "infected with HIV"),
        ("Do you have COPD?", "COPD"),
        ("Characterize the rash:", "characterize the rash"),
        ("?", "?"),
    ],
)
def test_uncurated_questions_get_a_derived_name(question: str, name: str) -> None:
    assert derive_finding_name(question) == name


# --- the real releases (../shared/data) ----------------------------------------------------


def _expected_from_raw_csv(directory: Path) -> tuple[int, int, int, int]:
    """Rows, EVIDENCES entries, distinct questions and distinct answers, counted straight from
    the CSVs with the standard library, independently of the loader."""
    rows = entries = questions = answers = 0
    for file in sorted(directory.glob("*.csv")):
        with file.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                evidences = ast.literal_eval(row["EVIDENCES"])
                items, initial = set(evidences), row["INITIAL_EVIDENCE"]
                if not any(e == initial or e.startswith(initial + "_@_") for e in items):
                    items.add(initial)
                rows += 1
                entries += len(evidences)
                questions += len({e.split("_@_")[0] for e in items})
                answers += len(items)
    return rows, entries, questions, answers


def _decoded_values(case: Case) -> int:
    """How many answers a case's findings carry: one for a present, negated or numeric
    finding; one per value of a multi-choice one (joined with ", ", which no meaning contains)."""
    return sum(len(f.value.split(", ")) if isinstance(f.value, str) else 1 for f in case.findings)


def _check_complete_release(directory: Path, v0: bool) -> list[Case]:
    cases, report, stats = _load(directory, v0=v0)
    rows, entries, questions, answers = _expected_from_raw_csv(directory)
    assert report.skipped == []
    assert stats.rows == report.n_cases == len(cases) == rows
    assert stats.evidences == entries  # every EVIDENCES entry decoded
    assert sum(len(c.findings) for c in cases) == questions  # one finding per question
    assert sum(_decoded_values(c) for c in cases) == answers  # every value kept
    release = DDXPlusRelease.from_path(directory)
    assert stats.codes <= set(release.evidences)
    labels = {c.require_label().diagnosis for c in cases}
    assert labels <= set(ddxplus_candidates(directory))
    assert all(d.icd10 for c in cases for d in c.require_label().differential)
    return cases


def test_english_release_sample_loads_completely(shared_data: Path) -> None:
    cases = _check_complete_release(shared_data / "ddxplus", v0=False)
    assert len(cases) == 1567
    assert len({c.require_label().diagnosis for c in cases}) == 49


def test_v0_release_loads_completely(shared_data: Path) -> None:
    cases = _check_complete_release(shared_data / "ddxplus_v0", v0=True)
    assert len(cases) == 14382
    assert len({c.require_label().diagnosis for c in cases}) == 49


def test_releases_share_one_label_space_and_finding_names(shared_data: Path) -> None:
    en, v0 = shared_data / "ddxplus", shared_data / "ddxplus_v0"
    assert ddxplus_candidates(v0) == ddxplus_candidates(en)
    assert len(ddxplus_candidates(en)) == 49
    assert ddxplus_icd10(v0) == ddxplus_icd10(en)
    # Every id places its pathology in an ICD-10 chapter, so evaluation can score levels.
    assert all(icd10_levels(code).chapter for code in ddxplus_icd10(en).values())
    en_release, v0_release = DDXPlusRelease.from_path(en), DDXPlusRelease.from_path(v0)
    en_names = {e.name for e in en_release.evidences.values()}
    assert {e.name for e in v0_release.evidences.values()} == en_names
    assert len(en_names) == 223  # every question has its own name
    # Every question of both releases has a hand-written short name.
    assert all(q in SHORT_NAMES for q in _questions(en) | _questions(v0))


def _questions(directory: Path) -> set[str]:
    import json

    data = json.loads((directory / "release_evidences.json").read_text(encoding="utf-8"))
    return {e["question_en"] for e in data.values()}


def test_english_sample_prompts_fit_the_token_budget(shared_data: Path, tokenizer: Any) -> None:
    cases = _load(shared_data / "ddxplus")[0]
    lengths = [len(render_prompt(c, tokenizer).input_ids) for c in cases[::4]]
    assert statistics.median(lengths) < 200
    assert not any(render_prompt(c, tokenizer).truncated for c in cases[::4])
