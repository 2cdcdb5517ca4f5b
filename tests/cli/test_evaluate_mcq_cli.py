"""``feddx evaluate --data mcq:FILE``: one JSON object with ``n`` and ``accuracy`` (and
``parse_failures`` under ``--protocol flowertune``); a malformed line is skipped and named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import feddx.cli.evaluate  # noqa: F401  (registers the command until cli/__init__ imports it)
from feddx.cli import main

ROWS = [
    {
        "question": f"Question {i}",
        "options": {"A": "Aspirin", "B": "Heparin", "C": "Insulin", "D": "Morphine"},
        "answer_idx": "ABCD"[i % 4],
        "meta_info": "step1" if i % 2 else "step2&3",
    }
    for i in range(4)
]


@pytest.fixture()
def questions(tmp_path: Path) -> Path:
    path = tmp_path / "mcq.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    lines.insert(2, json.dumps({**ROWS[0], "answer_idx": "Z"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["evaluate", *argv, "--json", "--resamples", "200"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    return dict(json.loads(out))


def test_likelihood_json(
    tiny_llama_dir: Path, questions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preds = tmp_path / "answers.jsonl"
    data = f"mcq:{questions}"
    r = _run(capsys, "--data", data, "--model", str(tiny_llama_dir), "--predictions", str(preds))
    assert r["n"] == 4 and r["protocol"] == "likelihood" and 0 <= r["accuracy"] <= 1
    assert r["meta"]["skipped"] == [
        "mcq.jsonl:3: answer not among the options (answer_idx/cop/answer)"
    ]
    assert set(r["per_subject"]) == {"step1", "step2&3"}
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 4 and all(set(x["scores"]) == set("ABCD") for x in rows)
    assert sum(x["correct"] for x in rows) == r["correct"]


def test_flowertune_json_reports_parse_failures(
    tiny_llama_dir: Path, questions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = _run(
        capsys,
        "--data",
        f"mcq:{questions}",
        "--model",
        str(tiny_llama_dir),
        "--protocol",
        "flowertune",
    )
    assert r["n"] == 4 and "accuracy" in r and 0 <= r["parse_failures"] <= 4


def test_both_protocols_in_one_run(
    tiny_llama_dir: Path, questions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", f"mcq:{questions}", "--model", str(tiny_llama_dir), "--limit", "2"]
    r = _run(capsys, *argv, "--protocol", "likelihood", "--protocol", "flowertune")
    assert r["n"] == 2 and r["comparison"]["a"] == "likelihood"
    assert r["protocols"]["flowertune"]["n"] == 2


def test_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["evaluate", "--data", f"mcq:{tmp_path / 'nope.jsonl'}"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error:") and "\n" not in err and "not found" in err


def test_shared_medqa_dev_questions(
    shared_data: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = f"mcq:{shared_data / 'medqa' / 'medqa_usmle_4opt_dev100.jsonl'}"
    argv = ["--data", data, "--model", str(tiny_llama_dir), "--limit", "3"]
    r = _run(capsys, *argv, "--protocol", "likelihood", "--protocol", "flowertune")
    assert r["n"] == 3 and r["meta"]["n_skipped"] == 0
    assert r["protocols"]["likelihood"]["chance"] == 0.25


def test_protocol_without_mcq_data_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", "uci-heart", "--protocol", "flowertune"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error:") and "mcq:FILE" in err and "\n" not in err
