"""Prompt rendering: one compact format, always within the token budget."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from feddx.data.schema import Case, Encounter, Finding, History, Label
from feddx.model.prompt import (
    PROMPT_WORDS,
    SYSTEM_PROMPT,
    answer_ids,
    case_to_text,
    history_items,
    history_pieces,
    relative_date,
    render_answer,
    render_finding,
    render_prompt,
)


def _case(**kw: Any) -> Case:
    base: dict[str, Any] = {"case_id": "c1", "age": 63, "sex": "male"}
    return Case(**{**base, **kw})


def test_findings_render_tersely() -> None:
    assert render_finding(Finding(name="fever")) == "fever"
    assert render_finding(Finding(name="fever", negated=True)) == "no fever"
    assert render_finding(Finding(name="cough", value=False)) == "no cough"
    assert render_finding(Finding(name="BP", value=145.0, unit="mmHg")) == "BP: 145 mmHg"
    assert render_finding(Finding(name="pain", value="burning")) == "pain: burning"


def test_prompt_uses_chat_template_and_contains_case(tokenizer: Any) -> None:
    case = _case(findings=(Finding(name="chest pain", value="typical angina"),), text="Short note.")
    p = render_prompt(case, tokenizer)
    assert SYSTEM_PROMPT in p.text
    assert p.text.endswith("<|im_start|>assistant\n")
    assert (
        "63y male" in p.text and "chest pain: typical angina" in p.text and "Short note." in p.text
    )
    assert not p.truncated
    assert p.input_ids == tokenizer(p.text, add_special_tokens=False)["input_ids"]


def test_budget_keeps_priority_order(tokenizer: Any) -> None:
    findings = tuple(Finding(name=f"finding number {i}") for i in range(60))
    history = History(
        encounters=tuple(
            Encounter(date=dt.date(2020, 1, d), diagnoses=(f"old dx {d}",)) for d in range(1, 20)
        )
    )
    case = _case(findings=findings, text="word " * 300, history=history)
    p = render_prompt(case, tokenizer, max_tokens=160)
    assert len(p.input_ids) <= 160
    assert p.truncated
    assert "finding number 0" in p.text  # highest priority survives
    assert "old dx" not in p.text  # history is dropped first


def test_budget_truncates_note_at_word_boundary(tokenizer: Any) -> None:
    case = _case(text=" ".join(f"w{i}" for i in range(400)))
    p = render_prompt(case, tokenizer, max_tokens=120)
    assert len(p.input_ids) <= 120
    assert "w0 w1" in p.text and "w399" not in p.text


def test_recent_history_first(tokenizer: Any) -> None:
    history = History(
        encounters=(
            Encounter(date=dt.date(2019, 1, 1), diagnoses=("asthma",)),
            Encounter(date=dt.date(2023, 5, 1), diagnoses=("pneumonia",)),
        )
    )
    text = case_to_text(_case(history=history))
    assert text.index("pneumonia") < text.index("asthma")


def test_budget_too_small_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="below the bare prompt size"):
        render_prompt(_case(findings=(Finding(name="x" * 50),)), tokenizer, max_tokens=5)


def test_answer_is_the_diagnosis_closed_by_end_of_turn(tokenizer: Any) -> None:
    label = Label(diagnosis="Pneumonia", icd10="J18.9")
    assert render_answer(label) == "Pneumonia" == render_answer("Pneumonia")
    ids = answer_ids(tokenizer, label)
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[:-1]) == "Pneumonia"


def test_undated_history_most_recent_first() -> None:
    history = History(
        encounters=(Encounter(diagnoses=("older stay",)), Encounter(diagnoses=("newer stay",)))
    )
    text = case_to_text(_case(history=history))
    assert text.index("newer stay") < text.index("older stay")


def test_explicit_history_lines_replace_the_default_and_keep_their_order(tokenizer: Any) -> None:
    case = _case(
        findings=(Finding(name="cough"),),
        history=History(prior_conditions=("asthma", "diabetes")),
    )
    assert "Prior conditions: asthma, diabetes." in render_prompt(case, tokenizer).text
    p = render_prompt(
        case, tokenizer, history=("Prior condition: diabetes.", "Prior condition: asthma.")
    )
    assert "Prior conditions:" not in p.text
    assert p.text.index("diabetes") < p.text.index("asthma")
    assert "asthma" not in render_prompt(case, tokenizer, history=()).text
    # Under a tight budget the first lines given are the ones kept.
    lines = tuple(f"Prior condition: condition number {i}." for i in range(40))
    tight = render_prompt(case, tokenizer, 120, history=lines)
    assert tight.truncated and len(tight.input_ids) <= 120
    assert "condition number 0." in tight.text and "condition number 39." not in tight.text


def test_fewshot_examples_come_before_the_patient_and_go_first_under_budget(
    tokenizer: Any,
) -> None:
    from feddx.model.prompt import Example, case_summary

    case = _case(findings=(Finding(name="cough"), Finding(name="fever")))
    ex = (Example("70y female; wheeze", "Asthma"), Example("40y male; fever; cough", "Pneumonia"))
    p = render_prompt(case, tokenizer, examples=ex)
    assert "Similar past cases:\n1. 70y female; wheeze -> Asthma\n2. 40y male" in p.text
    assert p.text.index("-> Pneumonia") < p.text.index("Patient: 63y male")
    assert not p.truncated
    plain = render_prompt(case, tokenizer)
    assert render_prompt(case, tokenizer, examples=()).text == plain.text
    # A budget that fits the case and one example keeps exactly the first example.
    one = len(render_prompt(case, tokenizer, examples=ex[:1]).input_ids)
    cut = render_prompt(case, tokenizer, one, examples=ex)
    assert cut.truncated and "-> Asthma" in cut.text and "Pneumonia" not in cut.text
    assert "fever" in cut.text  # the patient's own findings are never dropped for examples
    assert case_summary(case) == "63y male; cough; fever"


def _rich_history_case() -> Case:
    """A dated case with every kind of history item (issue 24 item 1)."""
    return _case(
        date=dt.date(2024, 6, 1),
        findings=(Finding(name="dyspnea"),),
        history=History(
            prior_conditions=("heart failure",),
            medications=("furosemide",),
            allergies=("penicillin",),
            encounters=(
                Encounter(date=dt.date(2019, 3, 1), diagnoses=("ankle fracture",)),
                Encounter(date=dt.date(2024, 2, 20), diagnoses=("pneumonia",)),
                Encounter(date=dt.date(2024, 5, 20), reason="chest pain"),
            ),
        ),
    )


def test_history_layout_relative_dates_and_priority_order() -> None:
    assert history_pieces(_rich_history_case()) == [
        "Prior conditions: heart failure.",
        "Medications: furosemide.",
        "Allergies: penicillin.",
        "Earlier visit 12d before: chest pain.",
        "Earlier visit 3mo before: pneumonia.",
        "Earlier visit 5y before: ankle fracture.",
    ]
    # No calendar date reaches the prompt when the case is dated.
    assert "2019" not in case_to_text(_rich_history_case())


def test_history_over_budget_keeps_the_most_relevant_lines(tokenizer: Any) -> None:
    case = _rich_history_case()
    full = render_prompt(case, tokenizer)
    assert not full.truncated
    # Tighten the budget token by token: whatever is cut, the lines kept are always a prefix of
    # the priority order (conditions, medications, allergies, then the newest visits).
    pieces = history_pieces(case)
    kept_counts = set()
    for budget in range(len(full.input_ids) - 1, len(full.input_ids) - 40, -1):
        p = render_prompt(case, tokenizer, budget)
        assert p.truncated and len(p.input_ids) <= budget
        kept = [x for x in pieces if x in p.text]
        assert kept == pieces[: len(kept)]
        kept_counts.add(len(kept))
    assert len(kept_counts) > 2  # the loop really cut several lines, oldest visit first


def test_relative_dates_words_and_fallbacks() -> None:
    en, pt = PROMPT_WORDS["en"], PROMPT_WORDS["pt"]
    today = dt.date(2024, 6, 1)
    assert relative_date(dt.date(2024, 5, 31), today, en) == "1d before"
    assert relative_date(dt.date(2023, 6, 1), today, en) == "12mo before"
    assert relative_date(dt.date(2014, 6, 1), today, pt) == "10a antes"
    assert relative_date(dt.date(2024, 5, 1), None, en) == "2024-05-01"  # undated case
    assert relative_date(None, today, en) == "undated"


def test_history_items_one_line_each_in_the_case_language() -> None:
    items = history_items(_rich_history_case())
    assert items[0] == ("Earlier visit 12d before: chest pain.", 0)
    assert [t for t, _ in items[3:]] == [
        "Prior condition: heart failure.",
        "Medication: furosemide.",
        "Allergy: penicillin.",
    ]
    pt = _rich_history_case().model_copy(update={"language": "pt-BR"})
    assert history_items(pt)[-1][0] == "Alergia: penicillin."
