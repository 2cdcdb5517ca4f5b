"""The logistic-regression baseline learns from findings (and from text where there is no
structure), and reports over the same candidate list as the LLM."""

from __future__ import annotations

import pytest
from evaluate_fixtures import make_cases  # type: ignore[import-not-found]

from feddx.data.schema import Case, Label
from feddx.evaluate.baseline import case_features, fit_baseline


def test_features_encode_values_negation_and_demographics() -> None:
    case = make_cases(3)[2]  # Pneumonia: numeric fever, plain cough
    f = case_features(case)
    assert f["fever#num"] == pytest.approx(39.2) and f["cough"] == 1.0
    assert f["_age"] == case.age and f[f"_sex={case.sex}"] == 1.0
    gerd = make_cases(2)[1]
    assert case_features(gerd)["exertional"] == -1.0
    assert case_features(gerd)["chest pain=burning"] == 1.0


def test_separable_findings_are_learned() -> None:
    model = fit_baseline(make_cases(30))
    preds = model.predict(make_cases(9, offset=50), ["Angina", "GERD", "Pneumonia", "Influenza"])
    assert all(p.top == p.gold for p in preds)
    influenza = next(r for r in preds[0].ranked if r.name == "Influenza")
    assert influenza.probability == 0.0  # never seen in training
    assert sum(r.probability for r in preds[0].ranked) == pytest.approx(1.0)


def test_text_only_cases_use_tfidf() -> None:
    words = {"Migraine": "throbbing headache light hurts", "Asthma": "wheezing short of breath"}
    cases = [
        Case(case_id=f"t{i}", text=words[d], label=Label(diagnosis=d))
        for i, d in enumerate(list(words) * 5)
    ]
    preds = fit_baseline(cases).predict(cases[:2], list(words))
    assert [p.top for p in preds] == [p.gold for p in preds]


def test_one_label_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        fit_baseline(make_cases(1))
