"""``feddx demo --story crosslingual`` end to end on a tiny random Llama and a few cases: the
federation of English and Portuguese clinics runs, the gate decides, the report is written;
an unknown story is a one-line usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.demo.test_crosslingual_experiment import write_pair

from feddx.cli import main


def test_story_runs_end_to_end_and_ends_with_its_report(
    tmp_path: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    en, pt = write_pair(tmp_path)
    out = tmp_path / "story"
    argv = ["demo", "--story", "crosslingual", "--model", str(tiny_llama_dir)]
    argv += ["--set", "top-layers=1", "--set", "rounds=2", "--set", "personal_epochs=1"]
    assert main([*argv, "--data", f"{en},{pt}", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    fed, pers = results["systems"]
    assert fed["name"] == "federation-pt" and fed["extra"]["clients"] == 4
    assert pers["extra"]["gate"]["n_validation"] == results["sizes"]["pt_validation"] == 6
    assert fed["n_test"] == pers["n_test"] == 15
    assert results["settings"]["rounds"] == 2 and set(fed["validation_top1"]) == {"1", "2"}
    # the personalized system is its parent's answers unless the gate let it answer
    if not pers["extra"]["gate"]["accepted"]:
        assert pers["correct"] == fed["correct"]
    assert {c["linear"].split()[0] for c in results["comparisons"]} == {"word", "char"}
    page = (out / "report.html").read_text()
    assert "Portuguese clinic" in page and f"{pers['top1']:.3f}" in page
    assert "report written to" in capsys.readouterr().out


def test_unknown_story_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--story", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown story 'nope'" in err


def test_story_refuses_a_data_option_that_is_not_two_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--story", "crosslingual", "--data", str(tmp_path / "one.csv")]) == 2
    assert "EN.csv,PT.csv" in capsys.readouterr().err


def test_story_names_an_unknown_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--story", "crosslingual", "--set", "layers=1"]) == 2
    err = capsys.readouterr().err
    assert "--set layers=1" in err and "top_layers" in err


def test_the_default_demo_report_points_to_the_story() -> None:
    from feddx.demo.report import render_report

    assert "feddx demo --story crosslingual" in render_report({"stages": {}, "config": {}})
