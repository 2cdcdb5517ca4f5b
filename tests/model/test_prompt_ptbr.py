"""The prompt in the case's language: a pt-BR case is asked in Portuguese (system prompt, section
words, negation, demographics); its answer, labels and codes are the English ones; every case
without a language, or in another language, gets exactly the English prompt."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from feddx.data.report import LoadReport
from feddx.data.schema import Case, Encounter, Finding, History, Label
from feddx.data.text_csv import load_text_csv
from feddx.model.prompt import (
    PROMPT_WORDS,
    SYSTEM_PROMPT,
    answer_ids,
    case_to_text,
    render_prompt,
)


def _case(language: str | None) -> Case:
    return Case(
        case_id="c1",
        age=34,
        sex="female",
        language=language,
        findings=(Finding(name="febre"), Finding(name="tosse", negated=True)),
        text="Dor de cabeça há dois dias.",
        history=History(
            prior_conditions=("asma",),
            medications=("salbutamol",),
            encounters=(Encounter(date=dt.date(2024, 1, 5), diagnoses=("Sinusite",)), Encounter()),
        ),
        label=Label(diagnosis="Migraine", icd10="G43"),
    )


def test_a_pt_br_case_is_asked_in_portuguese(tokenizer: Any) -> None:
    p = render_prompt(_case("pt-BR"), tokenizer)
    assert PROMPT_WORDS["pt"].system in p.text and SYSTEM_PROMPT not in p.text
    assert case_to_text(_case("pt-BR")).splitlines() == [
        "Paciente: 34 anos, sexo feminino.",
        "Achados: febre; sem tosse.",
        "Relato: Dor de cabeça há dois dias.",
        "Condições prévias: asma.",
        "Medicamentos: salbutamol.",
        "Consulta anterior 2024-01-05: Sinusite.",
        "Consulta anterior sem data: consulta.",
    ]


@pytest.mark.parametrize("language", [None, "en", "en-US", "fr"])
def test_every_other_case_keeps_the_english_prompt(tokenizer: Any, language: str | None) -> None:
    english = render_prompt(_case(language), tokenizer).text
    assert SYSTEM_PROMPT in english and "Patient: 34y female." in english
    assert "Findings: febre; no tosse." in english and "Earlier visit undated: visit." in english


def test_labels_and_codes_do_not_change_with_the_language(tokenizer: Any) -> None:
    pt, en = _case("pt"), _case(None)
    assert pt.require_label() == en.require_label()
    assert answer_ids(tokenizer, pt.require_label()) == answer_ids(tokenizer, en.require_label())


def test_the_budget_is_measured_on_the_portuguese_template(tokenizer: Any) -> None:
    case = _case("pt-BR").model_copy(update={"text": "palavra " * 400})
    p = render_prompt(case, tokenizer, max_tokens=120)
    assert p.truncated and len(p.input_ids) <= 120 and "Paciente: 34 anos" in p.text


def test_a_base_model_without_chat_template_gets_the_portuguese_answer_cue(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenizer, "chat_template", None)
    assert render_prompt(_case("pt-BR"), tokenizer).text.endswith("\n\nDiagnóstico: ")
    assert render_prompt(_case(None), tokenizer).text.endswith("\n\nDiagnosis: ")


def test_a_csv_language_column_sets_the_case_language(tmp_path: Path) -> None:
    path = tmp_path / "casos.csv"
    path.write_text("label,text,language\nMigraine,Dor de cabeça,pt-BR\nMigraine,Headache,en\n")
    path.write_text(path.read_text() + "Migraine,Dor,not a tag!\n")
    report = LoadReport("csv")
    cases = list(load_text_csv(path, report))
    assert [c.language for c in cases] == ["pt-BR", "en"]
    assert [s.reason for s in report.skipped] == ["invalid value"]
