"""The candidate-restricted answer loss (``TrainConfig.answer_loss = "candidates"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from train_fixtures import DIAGNOSES  # type: ignore[import-not-found]

from feddx.data.cases import case_reference
from feddx.data.schema import Case, Label
from feddx.errors import ConfigError, DataError
from feddx.model.adapter import LoraSpec
from feddx.model.prompt import answer_ids, render_prompt
from feddx.model.scoring import prepare_candidates, score_candidates, trie_choices
from feddx.train.batching import collate, encode_cases
from feddx.train.config import TrainConfig
from feddx.train.forward import TrainingRunner
from feddx.train.trainer import train_adapter

CANDIDATES = [*DIAGNOSES, "Acute bronchitis", "Acute sinusitis"]
CONFIG = TrainConfig(
    learning_rate=2e-2,
    batch_size=4,
    epochs=4,
    answer_loss="candidates",
    lora=LoraSpec(dropout=0.0),
)


def test_trie_choices_are_the_continuations_of_each_prefix() -> None:
    seqs = [(1, 2, 9), (1, 3, 9), (4, 9)]
    assert trie_choices(seqs) == [
        ((1, 4), (2, 3), (9,)),
        ((1, 4), (2, 3), (9,)),
        ((1, 4), (9,)),
    ]


def test_examples_carry_choices_and_batches_keep_only_branching_positions(
    tokenizer: Any, cases: list[Case]
) -> None:
    examples = encode_cases(cases[:4], tokenizer, 256, CANDIDATES)
    for case, ex in zip(cases[:4], examples, strict=True):
        assert ex.choices is not None and len(ex.choices) == len(ex.answer)
        assert all(tok in opts for tok, opts in zip(ex.answer, ex.choices, strict=True))
        assert ex.answer == tuple(answer_ids(tokenizer, case.require_label()))
    batch = collate(examples, [0, 1, 2, 3], tokenizer.pad_token_id)
    assert batch.choices is not None and batch.choices.shape[0] == batch.n_answer_tokens
    branching = sum(len(o) >= 2 for ex in examples for o in ex.choices or ())
    assert batch.n_answer_tokens == branching < sum(len(ex.answer) for ex in examples)
    for j in range(batch.n_answer_tokens):
        assert int(batch.targets[j]) in batch.choices[j].tolist()


def test_choice_loss_is_the_cross_entropy_of_the_renormalised_distribution(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    runner = TrainingRunner(make_model())
    examples = encode_cases(cases[:3], tokenizer, 256, CANDIDATES)
    batch = collate(examples, [0, 1, 2], tokenizer.pad_token_id)
    assert batch.choices is not None
    with torch.no_grad():
        hidden = runner.embed(batch.input_ids)
        got = runner.answer_losses(hidden, 0, batch)
        states = runner.answer_states(hidden, 0, batch)
        logits = runner.logits(states)
    for j in range(batch.n_answer_tokens):
        opts = [t for t in batch.choices[j].tolist() if t >= 0]
        log_p = F.log_softmax(logits[j, opts], dim=0)
        want = -log_p[opts.index(int(batch.targets[j]))]
        torch.testing.assert_close(got[j], want, rtol=1e-5, atol=1e-5)


def test_training_with_the_candidate_loss_raises_the_gold_candidates_probability(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    model = make_model()
    candidates = prepare_candidates(tokenizer, CANDIDATES)

    def mean_gold_probability() -> float:
        total = 0.0
        for case in cases:
            prompt = render_prompt(case, tokenizer, 256).input_ids
            ranked = score_candidates(model, tokenizer, prompt, candidates, method="constrained")
            gold = case.require_label().diagnosis
            total += next(c.probability for c in ranked if c.name == gold)
        return total / len(cases)

    before = mean_gold_probability()
    result = train_adapter(model, tokenizer, cases, CONFIG, candidates=CANDIDATES)
    assert result.loss_history[-1] < result.loss_history[0]
    assert mean_gold_probability() > before + 0.3


def test_candidate_loss_errors_are_clear(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    with pytest.raises(ConfigError, match="needs the candidate list"):
        train_adapter(make_model(), tokenizer, cases, CONFIG)
    stray = [*cases, Case(case_id="odd-1", label=Label(diagnosis="Gout"))]
    with pytest.raises(DataError, match=r"1 of 25 .*outside the 6 candidates") as err:
        train_adapter(make_model(), tokenizer, stray, CONFIG, candidates=CANDIDATES)
    # Named by position and pseudonym, never by its id.
    assert f"training case 25 ({case_reference('odd-1')})" in str(err.value)
    assert "odd-1" not in str(err.value)
    with pytest.raises(ConfigError, match="at least 2"):
        train_adapter(make_model(), tokenizer, cases[:1], CONFIG, candidates=["Pneumonia"])
    with pytest.raises(ConfigError, match="answer_loss"):
        TrainConfig(answer_loss="softmax")  # type: ignore[arg-type]
