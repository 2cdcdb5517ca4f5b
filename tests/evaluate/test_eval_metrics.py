"""Classification metrics, group breakdowns and text-overlap metrics."""

from __future__ import annotations

import pytest

from feddx.data.schema import Case
from feddx.evaluate.groups import group_breakdown
from feddx.evaluate.metrics import confusion, summary, top_k_accuracy
from feddx.evaluate.text_metrics import text_overlap
from feddx.model.predict import Prediction, check_labels
from feddx.model.scoring import ScoredCandidate


def _pred(gold: str, ranking: list[str], **case_kw: object) -> Prediction:
    case = Case.model_validate(
        {"case_id": gold + str(len(ranking)), "label": {"diagnosis": gold}, **case_kw}
    )
    n = len(ranking)
    ranked = [
        ScoredCandidate(name, (n - i) / (n * (n + 1) / 2), -float(i))
        for i, name in enumerate(ranking)
    ]
    return Prediction(case, ranked, 10.0)


PREDS = [
    _pred("A", ["A", "B", "C"], institution="H1", age=30),
    _pred("B", ["A", "B", "C"], institution="H1", age=70),
    _pred("C", ["A", "B", "C"], institution="H2"),
]


def test_top_k_and_summary() -> None:
    assert top_k_accuracy(PREDS, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(PREDS, 2) == pytest.approx(2 / 3)
    s = summary(PREDS)
    assert {"n", "top1", "top3", "top5", "macro_f1", "latency_ms_p50"} <= set(s)
    assert s["n"] == 3 and s["top3"] == 1.0 and s["latency_ms_p50"] == 10.0
    # F1: A has P=1/3, R=1 -> 0.5; B and C are never predicted -> 0
    assert s["macro_f1"] == pytest.approx(0.5 / 3)


def test_confusion_matrix_follows_the_candidate_order() -> None:
    labels, matrix = confusion(PREDS, ["C", "B", "A"])
    assert labels == ["C", "B", "A"]
    assert matrix == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]


def test_group_breakdown() -> None:
    g = group_breakdown(PREDS)
    assert g["institution"] == {"H1": {"n": 2, "top1": 0.5}, "H2": {"n": 1, "top1": 0.0}}
    assert set(g["age_band"]) == {"18-39", "60-74", "unknown"}
    assert g["sex"] == {"unknown": {"n": 3, "top1": pytest.approx(1 / 3)}}
    with pytest.raises(ValueError, match="unknown group"):
        group_breakdown(PREDS, ["ward"])


def test_labels_outside_the_candidates_are_named() -> None:
    cases = [p.case for p in PREDS]
    with pytest.raises(ValueError, match=r"label outside the candidate list.*'C' \(1 case"):
        check_labels(cases, ["A", "B"])
    with pytest.raises(ValueError, match="no cases"):
        check_labels([], ["A"])
    unlabeled = Case(case_id="u1")
    with pytest.raises(ValueError, match="no label"):
        check_labels([unlabeled], ["A"])


def test_text_overlap() -> None:
    same = text_overlap(["Acute pulmonary edema"], ["Acute pulmonary edema"])
    assert same["bleu"] == pytest.approx(100.0) and same["rougeL"] == pytest.approx(1.0)
    assert same["exact_match"] == 1.0
    partial = text_overlap(["pulmonary edema."], ["Acute pulmonary edema"])
    assert 0 < partial["rouge1"] < 1 and partial["exact_match"] == 0.0
    with pytest.raises(ValueError):
        text_overlap([], [])
