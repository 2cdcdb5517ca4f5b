"""Multiple-choice protocols: ``likelihood`` picks the option the one scorer finds likeliest per
token; ``flowertune`` asks in FlowerTune's words and parses its way, so a non-letter output is
a parse failure counted wrong."""

from __future__ import annotations

from typing import Any

import pytest

from feddx.data.mcq import MCQuestion
from feddx.evaluate import mcq
from feddx.evaluate.mcq import (
    answer_likelihood,
    evaluate_mcq,
    flowertune_prompt,
    parse_flowertune,
)

Q = MCQuestion(
    "q1",
    "Which drug reverses heparin",
    {"A": "Vitamin K", "B": "Protamine sulfate", "C": "Naloxone", "D": "Flumazenil"},
    "B",
    "medqa",
    subject="step1",
)
YN = MCQuestion(
    "p1",
    "Does aspirin lower fever?",
    {a: a for a in ("yes", "no", "maybe")},
    "no",
    "pubmedqa",
    context="Aspirin is an antipyretic.",
)


@pytest.mark.parametrize(
    ("output", "style", "parsed"),
    [
        ("B", "medqa", "b"),
        (" b) Protamine", "medqa", "b"),
        ("E", "medqa", "e"),
        ("The answer", "medqa", None),
        ("Answer: C", "medqa", "a"),  # the first character, as FlowerTune reads it
        ("\n## C\nbecause", "medqa", "c"),
        ("", "medqa", None),
        ("yes", "pubmedqa", "yes"),
        ("Yesyes", "pubmedqa", "yes"),
        ("maybe", "pubmedqa", None),  # FlowerTune's parser never accepts maybe
    ],
)
def test_flowertune_parsing(output: str, style: str, parsed: str | None) -> None:
    assert parse_flowertune(output, style) == parsed


def test_flowertune_prompt_layout() -> None:
    p = flowertune_prompt(Q)
    assert p.startswith("<|im_start|>question\nYou are a medical doctor taking the US Medical")
    assert "\nQuestion: Which drug reverses heparin?\n\nOptions:\nA. Vitamin K\nB. Protamine" in p
    assert p.endswith("D. Flumazenil\nThe answer is:\n<|im_end|>\n<|im_start|>answer\n")
    yn = flowertune_prompt(YN)
    assert (
        "Answer yes, no, or maybe.\nAspirin is an antipyretic.\nDoes aspirin lower fever?\n" in yn
    )
    assert "Options" not in yn


def test_likelihood_chooses_the_best_mean_token_log_likelihood(
    tiny_model: Any, tokenizer: Any
) -> None:
    from feddx.model.prompt import answer_ids
    from feddx.model.scoring import candidate_log_likelihoods

    a = answer_likelihood(tiny_model, tokenizer, Q)
    ids = mcq.likelihood_prompt_ids(tokenizer, Q)
    per_token = candidate_log_likelihoods(
        tiny_model, ids, [answer_ids(tokenizer, Q.options[k]) for k in Q.keys]
    )
    means = [sum(t) / len(t) for t in per_token]
    assert a.scores is not None
    assert list(a.scores.values()) == pytest.approx(means, abs=1e-4)
    assert a.chosen == Q.keys[max(range(4), key=means.__getitem__)]


def test_flowertune_generates_one_token_for_a_letter_and_maps_it_to_the_key(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    import feddx.model.generate as generate

    seen: dict[str, Any] = {}
    outputs = iter(["B", "The answer is C"])

    def fake(model: Any, tok: Any, prompt: Any, *, max_new_tokens: int) -> str:
        seen.update(text=prompt.text, n=max_new_tokens, ids=prompt.input_ids)
        return next(outputs)

    monkeypatch.setattr(generate, "generate_answer", fake)
    result = evaluate_mcq(None, tokenizer, [Q, Q], ["flowertune"])
    assert seen["text"] == flowertune_prompt(Q) and seen["n"] == 1
    assert seen["ids"] == tokenizer(flowertune_prompt(Q))["input_ids"]
    s = result.to_dict(resamples=200)
    assert [a.chosen for a in result.results[0].answers] == ["B", None]
    assert (s["n"], s["correct"], s["accuracy"], s["parse_failures"]) == (2, 1, 0.5, 1)
    assert s["per_subject"] == {"step1": {"n": 2, "accuracy": 0.5}}
    assert s["chance"] == 0.25


def test_two_protocols_on_the_same_questions_are_compared_paired(
    tiny_model: Any, tokenizer: Any
) -> None:
    result = evaluate_mcq(tiny_model, tokenizer, [Q, YN], ["likelihood", "flowertune"])
    d = result.to_dict(resamples=200)
    assert d["n"] == 2 and set(d["protocols"]) == {"likelihood", "flowertune"}
    lik = d["protocols"]["likelihood"]
    assert 0 <= lik["accuracy_ci95"]["low"] <= lik["accuracy"] <= lik["accuracy_ci95"]["high"]
    assert "log-likelihood" in lik["choice"]
    assert d["comparison"]["n"] == 2 and "mcnemar" in d["comparison"]
    assert d["protocols"]["flowertune"]["parse_failures"] <= 2


def test_unknown_protocol_or_no_questions_is_refused(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_mcq(None, tokenizer, [Q], ["vibes"])
    with pytest.raises(ValueError, match="no questions"):
        evaluate_mcq(None, tokenizer, [], ["likelihood"])
