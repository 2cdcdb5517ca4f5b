"""The split forward: HF-equal loss on answer tokens only, and the cached-activation path
equal to the full path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from feddx.data.schema import Case
from feddx.errors import ModelError
from feddx.model.adapter import adapter_state, load_adapter_state
from feddx.train.batching import Batch, collate, encode_cases
from feddx.train.features import ActivationCache, frozen_fingerprint
from feddx.train.forward import (
    TrainingRunner,
    check_equivalence,
    check_model_once,
    reduce_losses,
)


def _random_lora(model: Any) -> None:
    g = torch.Generator().manual_seed(3)
    load_adapter_state(
        model, {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}
    )


def _hf_masked_loss(model: Any, tokenizer: Any, examples: list[Any]) -> torch.Tensor:
    """The reference: full prompt+answer sequences, labels -100 outside the answer, the
    model's own loss (all-position logits, shifted inside the model)."""
    seqs = [[*e.input_ids, e.answer[-1]] for e in examples]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (s, e) in enumerate(zip(seqs, examples, strict=True)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        labels[r, len(s) - len(e.answer) : len(s)] = torch.tensor(e.answer)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _our_loss(runner: TrainingRunner, batch: Batch, reduction: str) -> torch.Tensor:
    losses = runner.answer_losses(runner.embed(batch.input_ids), 0, batch)
    total, _ = reduce_losses(losses, batch, reduction)
    return total / (batch.n_answer_tokens if reduction == "token" else len(batch.indices))


@pytest.mark.parametrize("prune", [False, True])
def test_loss_equals_hugging_face_masked_loss(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], prune: bool
) -> None:
    model = make_model(target_modules=("q_proj", "v_proj", "o_proj", "down_proj"))
    _random_lora(model)
    model.eval()
    examples = encode_cases(cases[:5], tokenizer, 320)
    batch = collate(examples, range(5), tokenizer.pad_token_id)
    runner = TrainingRunner(model)
    assert runner.can_prune_last_layer
    runner.prune_last_layer = prune
    with torch.no_grad():
        ours = _our_loss(runner, batch, "token")
        reference = _hf_masked_loss(model, tokenizer, examples)
        per_example = torch.stack([_hf_masked_loss(model, tokenizer, [e]) for e in examples])
        ours_example = _our_loss(runner, batch, "example")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_example, per_example.mean(), rtol=1e-5, atol=1e-6)


def test_pruned_last_layer_gives_the_same_gradients(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    model = make_model(target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    _random_lora(model)
    model.eval()
    runner = TrainingRunner(model)
    examples = encode_cases(cases[:6], tokenizer, 320)
    batch = collate(examples, [5, 0, 3], tokenizer.pad_token_id)
    assert check_model_once(runner, examples[0], tokenizer.pad_token_id) < 1e-5
    assert runner.prune_last_layer  # verified on this model, so switched on
    grads = []
    for prune in (False, True):
        runner.prune_last_layer = prune
        model.zero_grad()
        _our_loss(runner, batch, "token").backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 3 * 2 * 5
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5)


def test_lm_head_sees_only_answer_positions(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    model = make_model()
    runner = TrainingRunner(model)
    batch = collate(encode_cases(cases[:3], tokenizer, 320), range(3), tokenizer.pad_token_id)
    rows: list[int] = []
    runner.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    _our_loss(runner, batch, "token")
    assert rows == [batch.n_answer_tokens]
    assert batch.n_answer_tokens < batch.n_tokens / 5


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("float16", 2e-3)])
def test_cached_activation_path_equals_full_path(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], dtype: str, tol: float
) -> None:
    model = make_model(layers=3, top_layers=1)
    _random_lora(model)
    model.eval()
    runner = TrainingRunner(model)
    examples = encode_cases(cases[:6], tokenizer, 320)
    batch = collate(examples, [4, 1, 2], tokenizer.pad_token_id)

    full = _our_loss(runner, batch, "token")
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    cache = ActivationCache(runner, examples, 2, dtype=dtype)
    cache.build(token_budget=64)  # several small batches, padded differently from `batch`
    assert cache.stats["computed"] == 6
    hidden = runner.run_layers(cache.batch_input(batch.indices), 2, 3)
    total, _ = reduce_losses(runner.token_losses(hidden, batch), batch, "token")
    cached = total / batch.n_answer_tokens
    cached.backward()
    torch.testing.assert_close(cached, full, rtol=tol, atol=tol)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, full_grads[name], rtol=50 * tol, atol=tol)


def test_disk_cache_is_reused_and_corrupt_entries_recomputed(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], tmp_path: Path
) -> None:
    model = make_model(layers=3, top_layers=1)
    runner = TrainingRunner(model)
    examples = encode_cases(cases[:4], tokenizer, 320)
    first = ActivationCache(runner, examples, 2, directory=tmp_path)
    first.build()
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 4 and not list(tmp_path.rglob(".tmp-*"))
    files[0].write_bytes(b"garbage")
    second = ActivationCache(runner, examples, 2, directory=tmp_path)
    second.build()
    assert second.stats == {**second.stats, "from_disk": 3, "computed": 1, "recomputed_corrupt": 1}
    for i in range(4):
        torch.testing.assert_close(second.batch_input([i]), first.batch_input([i]))


def test_over_budget_examples_are_recomputed_on_the_fly(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    model = make_model(layers=3, top_layers=1)
    runner = TrainingRunner(model)
    examples = encode_cases(cases[:4], tokenizer, 320)
    budget = ActivationCache(runner, examples, 2, max_bytes=0)
    budget.build()
    unlimited = ActivationCache(runner, examples, 2)
    unlimited.build()
    assert budget.stats["computed"] == 0 and budget.memory_bytes == 0
    torch.testing.assert_close(budget.batch_input([0, 3]), unlimited.batch_input([0, 3]))


def test_frozen_fingerprint_tracks_bottom_weights_only(make_model: Callable[..., Any]) -> None:
    model = make_model(layers=3, top_layers=1)
    runner = TrainingRunner(model)
    before = frozen_fingerprint(runner, 2)
    _random_lora(model)  # adapters live above the split: same frozen activations
    assert frozen_fingerprint(runner, 2) == before
    assert frozen_fingerprint(runner, 1) != before
    with torch.no_grad():
        runner.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert frozen_fingerprint(runner, 2) != before


def test_unsupported_architecture_is_detected(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    model = make_model()
    runner = TrainingRunner(model)
    batch = collate(encode_cases(cases[:2], tokenizer, 320), [0, 1], tokenizer.pad_token_id)
    assert check_equivalence(runner, batch) < 1e-5
    runner.norm = torch.nn.Identity()  # as if the model did something we do not replicate
    with pytest.raises(ModelError, match="not supported"):
        check_equivalence(runner, batch)
    with pytest.raises(ModelError, match="lacks an LM head"):
        TrainingRunner(torch.nn.Linear(2, 2))
