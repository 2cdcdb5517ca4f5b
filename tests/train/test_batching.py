"""Examples and batches: answer positions, errors for unusable data, and little padding."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from feddx.data.cases import case_reference
from feddx.data.schema import Case, Label
from feddx.errors import ConfigError, DataError
from feddx.model.prompt import answer_ids, render_prompt
from feddx.train.batching import (
    bucketed_batches,
    collate,
    encode_cases,
    poisson_batches,
    split_by_length,
)


def test_example_is_prompt_plus_answer_without_its_last_token(
    tokenizer: Any, cases: list[Case]
) -> None:
    [ex] = encode_cases(cases[:1], tokenizer, 320)
    prompt = render_prompt(cases[0], tokenizer, 320).input_ids
    answer = answer_ids(tokenizer, cases[0].require_label())
    assert answer[-1] == tokenizer.eos_token_id
    assert list(ex.input_ids) == prompt + answer[:-1]
    assert list(ex.answer) == answer
    assert ex.first == len(prompt) - 1  # the last prompt token predicts the first answer token


def test_collate_right_pads_and_locates_answer_tokens(tokenizer: Any, cases: list[Case]) -> None:
    examples = encode_cases(cases[:4], tokenizer, 320)
    batch = collate(examples, [2, 0], pad_id=-7)
    assert batch.input_ids.shape == (2, max(len(examples[2]), len(examples[0])))
    for row, i in enumerate([2, 0]):
        e = examples[i]
        assert batch.input_ids[row, : len(e)].tolist() == list(e.input_ids)
        assert (batch.input_ids[row, len(e) :] == -7).all()
        cols = batch.cols[batch.rows == row]
        assert cols.tolist() == list(range(e.first, len(e)))
        assert batch.targets[batch.rows == row].tolist() == list(e.answer)
        # The target at a position is the next input token, except the final end-of-turn.
        assert batch.input_ids[row, cols[:-1] + 1].tolist() == list(e.answer[:-1])


def test_empty_or_unlabelled_data_is_refused(tokenizer: Any, cases: list[Case]) -> None:
    with pytest.raises(DataError, match="dataset is empty"):
        encode_cases([], tokenizer, 320)
    unlabelled = [*cases[:3], Case(case_id="x-1", text="cough"), Case(case_id="x-2")]
    # The first is named by position and pseudonym, never by its id.
    ref = case_reference("x-1")
    assert ref.startswith("case#") and "x-1" not in ref
    with pytest.raises(
        DataError,
        match=rf"2 of 5 training cases have no label \(first: training case 4 \({ref}\)\)",
    ) as err:
        encode_cases(unlabelled, tokenizer, 320)
    assert "x-1" not in str(err.value)
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        encode_cases(cases[:1], tokenizer, 16)
    assert encode_cases([Case(case_id="y", label=Label(diagnosis="Flu"))], tokenizer, 320)


def test_bucketing_covers_every_example_once_and_pads_little() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(40, 300, (500,), generator=g).tolist()
    batches = bucketed_batches(lengths, 8, 16, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) <= 8 for b in batches)

    def padding(bs: list[list[int]]) -> float:
        slots = sum(len(b) * max(lengths[i] for i in b) for b in bs)
        return 1 - sum(lengths) / slots

    random_order = torch.randperm(500, generator=g).tolist()
    unsorted = [random_order[i : i + 8] for i in range(0, 500, 8)]
    assert padding(batches) < 0.05 < padding(unsorted)


def test_data_order_depends_only_on_seed_and_epoch() -> None:
    lengths = list(range(100))
    a = bucketed_batches(lengths, 4, 2, seed=3, epoch=1)
    assert a == bucketed_batches(lengths, 4, 2, seed=3, epoch=1)
    assert a != bucketed_batches(lengths, 4, 2, seed=3, epoch=2)
    assert a != bucketed_batches(lengths, 4, 2, seed=4, epoch=1)


def test_poisson_batches_sample_at_the_given_rate() -> None:
    batches = poisson_batches(1000, 0.02, 200, seed=0, epoch=0)
    sizes = [len(b) for b in batches]
    assert len(batches) == 200
    assert 18 < sum(sizes) / len(sizes) < 22
    assert poisson_batches(3, 0.01, 50, seed=0, epoch=0).count([]) > 40  # empty batches happen
    micro = split_by_length([5, 1, 9, 3], [0, 10, 0, 30, 0, 50, 0, 0, 0, 20], 3)
    assert micro == [[5, 3, 9], [1]]
