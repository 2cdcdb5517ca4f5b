"""JSONL of the case schema: round trip, precise skips, and atomic writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from feddx.data.jsonl import load_jsonl, write_jsonl
from feddx.data.report import LoadReport
from feddx.data.schema import Case, Finding, Label


def test_round_trip(tmp_path: Path) -> None:
    cases = [
        Case(case_id="a", age=40, findings=(Finding(name="fever"),), label=Label(diagnosis="Flu")),
        Case(case_id="b", text="cough for a week"),
    ]
    path = tmp_path / "cases.jsonl"
    assert write_jsonl(cases, path) == 2
    assert list(load_jsonl(path)) == cases


def test_bad_lines_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text('{"case_id": "a"}\n{not json\n\n{"case_id": "b", "age": -1}\n')
    report = LoadReport("jsonl")
    assert [c.case_id for c in load_jsonl(path, report)] == ["a"]
    assert [(s.line, s.reason) for s in report.skipped] == [
        (2, "invalid JSON"),
        (4, "invalid case"),
    ]
    assert "age" in report.skipped[1].detail


def test_failed_write_leaves_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    write_jsonl([Case(case_id="old")], path)

    def broken() -> Iterator[Case]:
        yield Case(case_id="new")
        raise RuntimeError("loader failed")

    with pytest.raises(RuntimeError):
        write_jsonl(broken(), path)
    assert [c.case_id for c in load_jsonl(path)] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.jsonl"]
