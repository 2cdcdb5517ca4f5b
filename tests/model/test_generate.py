"""Free generation through the same prompt renderer as scoring."""

from __future__ import annotations

from typing import Any

import pytest

from feddx.data.schema import Case, Finding
from feddx.model.generate import generate_answer, prompt_ids_for
from feddx.model.prompt import SYSTEM_PROMPT, render_prompt

CASE = Case(case_id="g1", age=50, sex="male", findings=(Finding(name="cough"),))


def test_a_case_is_asked_exactly_as_the_scorer_asks_it(tokenizer: Any) -> None:
    assert prompt_ids_for(tokenizer, CASE) == render_prompt(CASE, tokenizer).input_ids
    question = prompt_ids_for(tokenizer, "Why could this be pneumonia?")
    assert SYSTEM_PROMPT in tokenizer.decode(question)


def test_greedy_generation_is_deterministic_and_bounded(tiny_model: Any, tokenizer: Any) -> None:
    a = generate_answer(tiny_model, tokenizer, CASE, max_new_tokens=5)
    b = generate_answer(tiny_model, tokenizer, CASE, max_new_tokens=5)
    assert isinstance(a, str) and a == b
    assert len(tokenizer(a, add_special_tokens=False)["input_ids"]) <= 6  # decode/re-encode slack


def test_seeded_sampling_is_reproducible(tiny_model: Any, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Explain the diagnosis."}]
    a = generate_answer(tiny_model, tokenizer, messages, max_new_tokens=6, temperature=1.0, seed=3)
    b = generate_answer(tiny_model, tokenizer, messages, max_new_tokens=6, temperature=1.0, seed=3)
    assert a == b


@pytest.mark.parametrize(
    ("prompt", "kwargs", "message"),
    [
        ("  ", {}, "question is empty"),
        ([{"role": "doctor", "content": "x"}], {}, "role"),
        ([], {}, "no messages"),
        ("hello", {"max_new_tokens": 0}, "max_new_tokens"),
        ("hello", {"temperature": -1.0}, "temperature"),
        ("hello " * 400, {}, "over max_prompt_tokens"),
    ],
)
def test_bad_requests_are_refused(
    tiny_model: Any, tokenizer: Any, prompt: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        generate_answer(tiny_model, tokenizer, prompt, **kwargs)
