"""The whole harness on a tiny random model: every section is present, JSON is strict, the
HTML report is self-contained, and bad input is refused before any model work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from evaluate_fixtures import LABELS, make_cases  # type: ignore[import-not-found]

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case, Label
from feddx.data.stage import DeidStage
from feddx.evaluate.calibration import prediction_ece
from feddx.evaluate.differential import differential_summary
from feddx.evaluate.harness import EvaluationOptions, evaluate_cases
from feddx.evaluate.report import render_html, write_html, write_json, write_predictions
from feddx.model.predict import Prediction
from feddx.model.scoring import DEFAULT_METHOD, ScoredCandidate

CANDIDATES = [*LABELS, "Influenza"]


def test_end_to_end_with_baseline_calibration_and_report(
    diagnoser: Any,
    train_cases: list[Case],
    test_cases: list[Case],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stages: list[str] = []
    result = evaluate_cases(
        diagnoser,
        test_cases,
        CandidateList(CANDIDATES, dict(LABELS)),
        baseline_train=train_cases,
        options=EvaluationOptions(generate_n=2, max_new_tokens=4),
        on_progress=lambda stage, done, total: stages.append(stage),
    )
    data = json.loads(result.to_json())
    for key in ("n", "top1", "top3", "top5", "macro_f1", "balanced_accuracy", "latency_ms_p50"):
        assert key in data
    assert data["n"] == 12 and data["top5"] == 1.0  # only 4 candidates
    assert data["scoring_method"] == DEFAULT_METHOD
    # 12 cases: the temperature is cross-fitted on the other half, ECE before and after
    assert data["temperature"]["method"] == "cross-fit"
    assert len(data["temperature"]["fold_values"]) == 2
    calibrated = [
        Prediction(
            c,
            [ScoredCandidate(r["name"], r["probability"], r["score"]) for r in row["ranked"]],
            0.0,
        )
        for c, row in zip(test_cases, result.cases, strict=True)
    ]
    assert data["temperature"]["ece_after"] == pytest.approx(prediction_ece(calibrated))
    llm = data["llm"]
    assert llm["differential"]["n_differential"] == 12
    assert llm["differential"]["ddf1"] == pytest.approx(differential_summary(calibrated)["ddf1"])
    assert llm["hierarchy"] is None or "chapter_f1" in llm["hierarchy"]
    assert set(llm["groups"]) == {"institution", "region", "age_band", "sex"}
    assert sum(map(sum, llm["confusion_matrix"])) == 12
    # the baseline learns the separable findings perfectly, with the same metrics
    assert data["baseline"]["summary"]["top1"] == 1.0
    assert data["baseline"]["differential"]["gtpa@1"] == 1.0
    assert data["generation"]["n"] == 2 and "rougeL" in data["generation"]
    assert stages.count("scoring") == 12 and stages.count("generation") == 2
    # no patient data in the result: findings never appear
    assert "chest pain" not in result.to_json()

    write_json(result, tmp_path / "out" / "result.json")
    assert json.loads((tmp_path / "out" / "result.json").read_text())["n"] == 12
    # per-case rows: kept out of the aggregate JSON, written to their own file
    assert "cases" not in data and len(result.cases) == 12
    monkeypatch.setenv("FEDDX_DEID_KEY", "harness-test-key")
    stage = DeidStage()
    write_predictions(result, tmp_path / "out" / "cases.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()]
    # case ids leave as keyed pseudonyms (stable for the key), in the evaluated order
    assert [r["case_id"] for r in rows] == [stage.case_id(c.case_id) for c in test_cases]
    assert not {c.case_id for c in test_cases} & {r["case_id"] for r in rows}
    for row in rows:
        probs = [c["probability"] for c in row["ranked"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-6
        assert row["top1"] == row["ranked"][0]["name"]
        assert row["ranked"][row["gold_rank"] - 1]["name"] == row["gold"]
        assert row["correct"] == (row["top1"] == row["gold"])
        assert row["baseline_correct"] is True  # the baseline is perfect on these cases
    assert sum(r["correct"] for r in rows) == round(data["top1"] * 12)
    assert "chest pain" not in (tmp_path / "out" / "cases.jsonl").read_text()
    write_html(result, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # calibration, groups, 2 confusion
    assert "LLM vs baseline" in page and "<script" not in page
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_validation_split_fits_the_temperature(diagnoser: Any, test_cases: list[Case]) -> None:
    result = evaluate_cases(
        diagnoser,
        test_cases[:4],
        CANDIDATES,
        validation_cases=make_cases(6, offset=300),
        options=EvaluationOptions(method="constrained"),
    )
    assert result.temperature["method"] == "validation"
    assert result.temperature["n_validation"] == 6 and result.temperature["value"] > 0
    assert result.baseline is None and result.generation is None
    assert "<html>" in render_html(result) or "<!doctype html>" in render_html(result)


def test_label_outside_the_candidates_is_one_clear_error(
    diagnoser: Any, test_cases: list[Case]
) -> None:
    odd = Case(case_id="odd-1", label=Label(diagnosis="Appendicitis"))
    with pytest.raises(ValueError, match=r"label outside the candidate list.*'Appendicitis'"):
        evaluate_cases(diagnoser, [*test_cases, odd], CANDIDATES)
    with pytest.raises(ValueError, match="no evaluated cases"):
        evaluate_cases(diagnoser, [], CANDIDATES)
    with pytest.raises(ValueError, match="duplicates"):
        evaluate_cases(diagnoser, test_cases, ["GERD", "GERD"])
