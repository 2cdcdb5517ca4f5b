"""Personalization methods: local fine-tuning, Ditto's proximal pull, FedAvg and FedSA-LoRA.

A tiny random Llama and synthetic cases whose findings are the same at every institution but
whose label mix differs (one institution sees mostly "Asthma"): the behaviours asserted are
what each method is for, measured on tensors and scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from feddx.data.schema import Case, Finding, Label
from feddx.errors import ConfigError, DataError
from feddx.model.adapter import LoraSpec, adapter_state, load_adapter_state
from feddx.model.scoring import candidate_scores, prepare_candidates
from feddx.personalize.methods import (
    LocalTrainer,
    average_states,
    ditto,
    federate,
    is_lora_a,
    local_finetune,
    state_distance,
)
from feddx.train.config import TrainConfig

LABELS = ("Asthma", "Pneumonia")
CONFIG = TrainConfig(
    learning_rate=2e-2, batch_size=4, epochs=3, lora=LoraSpec(rank=4, alpha=8, dropout=0.0)
)


def skewed_cases(n: int, asthma_share: float, prefix: str) -> list[Case]:
    """``n`` cases with one uninformative finding; ``asthma_share`` of them are Asthma."""
    k = round(n * asthma_share)
    return [
        Case(
            case_id=f"{prefix}-{i}",
            findings=(Finding(name="cough"),),
            label=Label(diagnosis=LABELS[0] if i < k else LABELS[1]),
        )
        for i in range(n)
    ]


def asthma_probability(model: Any, tokenizer: Any, case: Case) -> float:
    """The model's trie-constrained probability of "Asthma" for ``case``."""
    from feddx.model.prompt import render_prompt

    cset = prepare_candidates(tokenizer, LABELS)
    with torch.inference_mode():
        scores = candidate_scores(model, render_prompt(case, tokenizer).input_ids, cset)
    return float(torch.softmax(torch.tensor(scores), 0)[0])


@pytest.fixture()
def trainer(make_model: Callable[..., Any], tokenizer: Any) -> LocalTrainer:
    model = make_model(layers=2, rank=4, alpha=8, dropout=0.0)
    return LocalTrainer(model.eval(), tokenizer)


def test_average_states_weights_by_size_and_can_select_lora_a() -> None:
    a = {"x.lora_A.weight": torch.zeros(2), "x.lora_B.weight": torch.zeros(2)}
    b = {"x.lora_A.weight": torch.full((2,), 4.0), "x.lora_B.weight": torch.full((2,), 8.0)}
    mean = average_states([a, b], [3, 1])
    assert torch.allclose(mean["x.lora_A.weight"], torch.full((2,), 1.0))
    assert torch.allclose(mean["x.lora_B.weight"], torch.full((2,), 2.0))
    only_a = average_states([a, b], [1, 1], keys=is_lora_a)
    assert list(only_a) == ["x.lora_A.weight"] and float(only_a["x.lora_A.weight"][0]) == 2.0
    with pytest.raises(ValueError, match="2 states but 1 weights"):
        average_states([a, b], [1])
    with pytest.raises(ValueError, match="other LoRA keys"):
        average_states([a, {"y.lora_A.weight": torch.zeros(2)}], [1, 1])


def test_local_finetune_moves_toward_the_local_label_prior(
    trainer: LocalTrainer, tokenizer: Any
) -> None:
    parent = adapter_state(trainer.model)
    probe = skewed_cases(1, 0.0, "probe")[0]
    before = asthma_probability(trainer.model, tokenizer, probe)
    tuned = local_finetune(trainer, parent, skewed_cases(16, 0.875, "h"), CONFIG)
    load_adapter_state(trainer.model, tuned)
    after = asthma_probability(trainer.model, tokenizer, probe)
    # 14 of 16 local cases are Asthma: its probability rises toward that prior (0.875).
    assert after > before + 0.2 and after > 0.6
    assert state_distance(tuned, parent) > 0


def test_ditto_with_large_mu_stays_closer_to_the_parent(trainer: LocalTrainer) -> None:
    parent = {k: v + 0.05 for k, v in adapter_state(trainer.model).items()}  # B != 0 too
    cases = skewed_cases(16, 0.875, "h")
    plain = local_finetune(trainer, parent, cases, CONFIG)
    pulled = ditto(trainer, parent, cases, CONFIG, mu=50.0)
    d_plain, d_pulled = state_distance(plain, parent), state_distance(pulled, parent)
    assert d_pulled < 0.5 * d_plain, (d_pulled, d_plain)
    with pytest.raises(ConfigError, match="mu > 0"):
        ditto(trainer, parent, cases, CONFIG, mu=0.0)


def test_fedavg_clients_end_with_the_global_state(trainer: LocalTrainer) -> None:
    start = adapter_state(trainer.model)
    clients = [skewed_cases(8, 0.9, "a"), skewed_cases(8, 0.1, "b")]
    result = federate(trainer, start, clients, CONFIG.replace(epochs=1), rounds=2)
    assert len(result.losses) == 2 and len(result.losses[0]) == 2
    for state in result.client_states:
        assert all(torch.equal(state[k], result.global_state[k]) for k in state)
    assert state_distance(result.global_state, start) > 0


def test_fedsa_shares_a_and_keeps_each_clients_b(trainer: LocalTrainer) -> None:
    start = adapter_state(trainer.model)
    clients = [skewed_cases(8, 0.9, "a"), skewed_cases(8, 0.1, "b")]
    result = federate(
        trainer, start, clients, CONFIG.replace(epochs=1), rounds=2, aggregate="lora-a"
    )
    first, second = result.client_states
    a_keys = [k for k in first if is_lora_a(k)]
    b_keys = [k for k in first if not is_lora_a(k)]
    assert a_keys and b_keys
    # A: one shared matrix per layer, moved by training; B: each client's own.
    for k in a_keys:
        assert torch.equal(first[k], second[k]) and torch.equal(first[k], result.global_state[k])
        assert not torch.equal(first[k], start[k])
    assert all(not torch.equal(first[k], second[k]) for k in b_keys)
    # The server's B is the size-weighted mean of the clients' (equal sizes here).
    for k in b_keys:
        assert torch.allclose(result.global_state[k], (first[k] + second[k]) / 2)


def test_federate_refuses_bad_input(trainer: LocalTrainer) -> None:
    start = adapter_state(trainer.model)
    with pytest.raises(ConfigError, match="rounds"):
        federate(trainer, start, [skewed_cases(4, 0.5, "a")], CONFIG, rounds=0)
    with pytest.raises(ConfigError, match="aggregate"):
        federate(trainer, start, [skewed_cases(4, 0.5, "a")], CONFIG, rounds=1, aggregate="b")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="client 1 has no training cases"):
        federate(trainer, start, [skewed_cases(4, 0.5, "a"), []], CONFIG, rounds=1)
