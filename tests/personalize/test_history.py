"""The patient's history in the prompt: orders, relevance ranking, budget, and DDXPlus
antecedents moved into the history."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from feddx.data.schema import Case, Encounter, Finding, History
from feddx.model.prompt import render_prompt
from feddx.personalize.history import (
    history_context,
    history_items,
    history_lines,
    lexical_similarity,
)


def _case() -> Case:
    return Case(
        case_id="h1",
        age=70,
        sex="female",
        findings=(Finding(name="shortness of breath"), Finding(name="leg swelling")),
        history=History(
            prior_conditions=("hypothyroidism", "congestive heart failure", "osteoarthritis"),
            medications=("furosemide",),
            encounters=(
                Encounter(date=dt.date(2019, 3, 1), diagnoses=("ankle fracture",)),
                Encounter(date=dt.date(2022, 5, 9), reason="heart failure with leg swelling"),
            ),
        ),
    )


def test_recent_is_the_renderers_default_and_none_drops_history() -> None:
    case = _case()
    assert history_lines(case, "recent") is None  # render_prompt's own lines, unchanged
    assert history_lines(case, "none") == ()
    with pytest.raises(ValueError, match="unknown history order 'oldest'"):
        history_lines(case, "oldest")  # type: ignore[arg-type]


def test_items_carry_recency_most_recent_encounter_first() -> None:
    items = history_items(_case())
    assert items[0] == ("Earlier visit 2022-05-09: heart failure with leg swelling.", 0)
    assert items[1] == ("Earlier visit 2019-03-01: ankle fracture.", 1)
    assert [t for t, _ in items[2:]] == [
        "Prior condition: hypothyroidism.",
        "Prior condition: congestive heart failure.",
        "Prior condition: osteoarthritis.",
        "Medication: furosemide.",
    ]


def test_relevance_puts_items_that_match_the_findings_first() -> None:
    lines = history_lines(_case(), "relevance")
    assert lines is not None
    # "leg swelling" matches 2 of the visit's 4 content words (heart, failure, leg, swelling);
    # the others share none and keep their recency order.
    assert lines[0] == "Earlier visit 2022-05-09: heart failure with leg swelling."
    assert lines[1:] == (
        "Earlier visit 2019-03-01: ankle fracture.",
        "Prior condition: hypothyroidism.",
        "Prior condition: congestive heart failure.",
        "Prior condition: osteoarthritis.",
        "Medication: furosemide.",
    )
    assert lexical_similarity("leg swelling; dyspnea", ["Prior condition: leg swelling."]) == [
        2 / 3  # condition, leg, swelling: "condition" is not in the query
    ]


def test_relevance_with_a_similarity_function_and_the_budget(tokenizer: Any) -> None:
    case = _case()

    def prefers_furosemide(_query: str, items: list[str]) -> list[float]:
        return [1.0 if "furosemide" in t else 0.0 for t in items]

    lines = history_lines(case, "relevance", prefers_furosemide)
    assert lines is not None and lines[0] == "Medication: furosemide."
    full = render_prompt(case, tokenizer, history=lines)
    assert not full.truncated
    # A budget with room for exactly one history line keeps the most relevant one.
    one = len(render_prompt(case, tokenizer, history=lines[:1]).input_ids)
    tight = render_prompt(case, tokenizer, one, history=lines)
    assert tight.truncated
    assert "furosemide" in tight.text and "osteoarthritis" not in tight.text
    ctx = history_context("relevance", prefers_furosemide)(case)
    assert ctx.history == lines and ctx.examples == ()


def test_ddxplus_antecedents_move_into_history(shared_data: Path) -> None:
    from itertools import islice

    from feddx.data.ddxplus import load_ddxplus
    from feddx.data.sources import load_source

    path = shared_data / "ddxplus"
    plain = list(islice(load_ddxplus(path), 50))
    moved = list(islice(load_ddxplus(path, antecedents_as_history=True), 50))
    assert [c.case_id for c in plain] == [c.case_id for c in moved]
    assert all(c.history.is_empty() for c in plain)
    first, first_moved = plain[0], moved[0]
    kept = len(first_moved.findings)
    assert first.findings[:kept] == first_moved.findings  # symptoms stay, in order
    n_moved = len(first.findings) - kept
    assert n_moved == len(first_moved.history.prior_conditions) > 0
    assert first_moved.history.prior_conditions == (
        "past heart attack or angina",
        "high blood pressure",
        "no travel abroad (4 weeks)",
        "heart failure",
        "past fluid in lungs",
    )
    assert sum(len(c.findings) + len(c.history.prior_conditions) for c in moved) == sum(
        len(c.findings) for c in plain
    )
    via_source = next(iter(load_source("ddxplus-history", path)))
    assert via_source == first_moved


def test_embedding_similarity_ranks_by_cosine() -> None:
    import numpy as np

    from feddx.personalize.history import embedding_similarity

    class TwoWords:
        name = "two-words"

        def encode(self, texts: list[str]) -> np.ndarray:
            v = np.array([[("swelling" in t) + 0.1, ("fracture" in t) + 0.1] for t in texts])
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    lines = history_lines(_case(), "relevance", embedding_similarity(TwoWords()))
    assert lines is not None
    assert lines[0] == "Earlier visit 2022-05-09: heart failure with leg swelling."
    assert lines[-1] == "Earlier visit 2019-03-01: ankle fracture."
