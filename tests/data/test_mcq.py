"""The ``mcq`` source: MedQA, MedMCQA and PubMedQA lines become questions; a malformed line is
skipped with its file, line and reason, never silently and never by quoting its text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddx.data.mcq import load_mcq, question_case
from feddx.data.report import LoadReport
from feddx.data.sources import load_cases, source_names
from feddx.errors import DataError

MEDQA = {
    "question": "Which drug reverses heparin",
    "options": {"A": "Vitamin K", "B": "Protamine", "C": "Naloxone", "D": "Flumazenil"},
    "answer_idx": "B",
    "meta_info": "step1",
}
MEDMCQA = {
    "id": "m1",
    "question": "Largest organ?",
    "opa": "Liver",
    "opb": "Skin",
    "opc": "Lung",
    "opd": "Brain",
    "cop": 1,
    "subject_name": "Anatomy",
}
PUBMEDQA = {
    "QUESTION": "Does aspirin lower fever?",
    "CONTEXTS": ["Aspirin is an antipyretic.", "Trials agree."],
    "final_decision": "yes",
}


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_the_three_published_layouts_are_read(tmp_path: Path) -> None:
    qs = list(load_mcq(_write(tmp_path / "q.jsonl", [MEDQA, MEDMCQA, PUBMEDQA])))
    medqa, medmcqa, pubmedqa = qs
    assert (medqa.style, medqa.answer, medqa.subject) == ("medqa", "B", "step1")
    assert medqa.keys == ("A", "B", "C", "D") and medqa.question_id == "q:1"
    assert (medmcqa.style, medmcqa.answer, medmcqa.options["B"]) == ("medmcqa", "B", "Skin")
    assert medmcqa.subject == "Anatomy" and medmcqa.question_id == "m1"
    assert pubmedqa.style == "pubmedqa" and pubmedqa.keys == ("yes", "no", "maybe")
    assert (
        pubmedqa.answer == "yes" and pubmedqa.context == "Aspirin is an antipyretic.\nTrials agree."
    )


def test_answer_text_is_used_when_the_key_is_absent(tmp_path: Path) -> None:
    row = {k: v for k, v in MEDQA.items() if k != "answer_idx"} | {"answer": "Protamine"}
    (q,) = load_mcq(_write(tmp_path / "q.jsonl", [row]))
    assert q.answer == "B"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("{not json", "invalid JSON"),
        ({**MEDQA, "answer_idx": "E"}, "answer not among the options"),
        ({k: v for k, v in MEDQA.items() if k != "question"}, "missing question"),
        ({**MEDQA, "options": {"A": "Same", "B": "Same"}}, "two options with the same text"),
        ({**MEDQA, "options": {"A": "Only"}}, "fewer than 2 options"),
        ({"question": "Is it?", "answer": "perhaps"}, "no options and no yes/no/maybe answer"),
        (["a", "list"], "not a JSON object"),
    ],
)
def test_a_malformed_line_is_skipped_with_file_line_and_reason(
    tmp_path: Path, row: object, reason: str
) -> None:
    report = LoadReport("mcq")
    qs = list(load_mcq(_write(tmp_path / "bad.jsonl", [MEDQA, row, MEDMCQA]), report))
    assert len(qs) == 2 and report.n_cases == 2
    (skip,) = report.skipped
    assert (skip.file, skip.line, skip.reason) == ("bad.jsonl", 2, reason)
    assert "heparin" not in str(skip)


def test_registered_as_a_data_source_whose_cases_are_labelled_with_the_key(
    tmp_path: Path,
) -> None:
    assert "mcq" in source_names()
    loaded = load_cases(f"mcq:{_write(tmp_path / 'q.jsonl', [MEDQA, PUBMEDQA])}")
    assert [c.require_label().diagnosis for c in loaded.cases] == ["B", "yes"]
    text = question_case(next(iter(load_mcq(tmp_path / "q.jsonl")))).text or ""
    assert "B. Protamine" in text and "heparin" in text


def test_a_file_with_no_question_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_cases(f"mcq:{_write(tmp_path / 'q.jsonl', ['{oops'])}")


def test_the_shared_medqa_sample_loads_whole(shared_data: Path) -> None:
    report = LoadReport("mcq")
    qs = list(load_mcq(shared_data / "medqa" / "medqa_usmle_4opt_dev100.jsonl", report))
    assert len(qs) == 100 and report.n_skipped == 0
    assert all(q.keys == ("A", "B", "C", "D") and q.style == "medqa" for q in qs)
    assert {q.subject for q in qs} <= {"step1", "step2&3"}
