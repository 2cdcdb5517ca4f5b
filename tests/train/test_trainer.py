"""train_adapter: learning, reproducibility, exact resume, checkpoint safety, FedProx, DP."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from feddx.data.schema import Case
from feddx.errors import DataError, ModelError
from feddx.model.adapter import LoraSpec, adapter_state, load_adapter_state
from feddx.train import checkpoint as checkpoint_mod
from feddx.train.config import DPConfig, TrainConfig
from feddx.train.trainer import lr_at, proximal_term, train_adapter

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAST = TrainConfig(learning_rate=5e-3, batch_size=4, epochs=2, lora=LoraSpec(dropout=0.1))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    model = make_model()
    config = FAST.replace(epochs=4, learning_rate=2e-2)
    result = train_adapter(model, tokenizer, cases, config)
    assert result.steps == 4 * 6 and result.examples == 4 * 24
    first, last = result.loss_history[:3], result.loss_history[-3:]
    assert sum(last) / 3 < sum(first) / 3 - 0.5
    assert result.examples_per_second > 0 and result.epsilon is None
    assert 0 <= result.stats["padding_ratio"] < 0.3
    assert not model.training  # the caller's mode is restored


def test_two_runs_with_one_seed_are_identical(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    a, b = make_model(), make_model()
    ra = train_adapter(a, tokenizer, cases, FAST)
    rb = train_adapter(b, tokenizer, cases, FAST)
    assert ra.loss_history == rb.loss_history
    assert _equal(adapter_state(a), adapter_state(b))
    c = make_model()
    train_adapter(c, tokenizer, cases, FAST.replace(seed=1))
    assert not _equal(adapter_state(a), adapter_state(c))


def test_top_layers_with_cached_activations_matches_uncached_training(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], tmp_path: Path
) -> None:
    config = FAST.replace(lora=LoraSpec(top_layers=1, dropout=0.0))
    cached = make_model(top_layers=1)
    r1 = train_adapter(cached, tokenizer, cases, config, feature_cache_dir=tmp_path)
    assert r1.stats["split_layer"] == 2 and r1.stats["cache_computed"] == 24
    # A second run (a later federated round) reads the activations from disk.
    again = make_model(top_layers=1)
    r2 = train_adapter(again, tokenizer, cases, config, feature_cache_dir=tmp_path)
    assert r2.stats["cache_from_disk"] == 24 and r2.stats["cache_computed"] == 0
    torch.testing.assert_close(r2.loss_history, r1.loss_history, rtol=1e-5, atol=1e-6)
    # Reference: no cache (a zero budget), the frozen layers run again on every step.
    plain = make_model(top_layers=1)
    r3 = train_adapter(plain, tokenizer, cases, config.replace(activation_cache_max_mb=0))
    assert r3.stats["cache_computed"] == 0
    torch.testing.assert_close(r3.loss_history, r1.loss_history, rtol=1e-5, atol=1e-5)
    for k, v in adapter_state(plain).items():
        torch.testing.assert_close(v, adapter_state(cached)[k], rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_equals_one_large_batch(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    from feddx.train.batching import encode_cases
    from feddx.train.trainer import _Trainer

    examples = encode_cases(cases[:8], tokenizer, 320)
    grads = []
    for micro in ([[0, 1, 2, 3, 4, 5, 6, 7]], [[0, 1, 2], [3, 4, 5, 6, 7]]):
        model = make_model(dropout=0.0)
        trainer = _Trainer(model, examples, TrainConfig(max_grad_norm=0), 0, None)
        trainer.step(micro, 0)
        grads.append({k: p.grad.clone() for k, p in trainer.params.items()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 10, 2, 1.0) for s in range(10)]
    assert lrs[0] < lrs[1] < lrs[2] == 1.0
    assert all(x > y for x, y in itertools.pairwise(lrs[2:])) and lrs[-1] > 0
    flat = [lr_at(s, 10, 2, 1.0, "constant") for s in range(10)]
    assert flat[:2] == lrs[:2] and flat[2:] == [1.0] * 8


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_reproduces_the_uninterrupted_run(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], tmp_path: Path
) -> None:
    config = FAST.replace(
        epochs=3,
        checkpoint_every=4,
        grad_accum=2,
        batch_size=2,
        lora=LoraSpec(top_layers=2, dropout=0.1),
    )
    whole = make_model(top_layers=2)
    expected = train_adapter(whole, tokenizer, cases, config, out_dir=tmp_path / "a")

    def crash_at_step_10(step: int, loss: float) -> None:
        if step == 10:
            raise _Interrupt

    broken = make_model(top_layers=2)
    with pytest.raises(_Interrupt):
        train_adapter(
            broken, tokenizer, cases, config, out_dir=tmp_path / "b", on_step=crash_at_step_10
        )
    steps = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert steps == ["step-0000004", "step-0000008"]  # the newest two are kept

    resumed_model = make_model(top_layers=2, seed=123)  # a fresh process: other initial values
    resumed = train_adapter(resumed_model, tokenizer, cases, config, out_dir=tmp_path / "b")
    assert resumed.stats["resumed_from_step"] == 8
    assert resumed.steps == expected.steps == 18
    assert resumed.loss_history == expected.loss_history
    assert resumed.mean_loss == expected.mean_loss
    assert _equal(adapter_state(resumed_model), adapter_state(whole))

    # A finished run resumes to its result without training again.
    done = train_adapter(
        make_model(top_layers=2, seed=7), tokenizer, cases, config, out_dir=tmp_path / "b"
    )
    assert done.steps == 18 and done.loss_history == expected.loss_history


class _Recorder:
    """A TrainProgress that records the events."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def started(self, stage: str, total: int, done: int = 0) -> None:
        self.events.append(("started", stage, total, done))

    def advanced(self, n: int = 1, info: str = "") -> None:
        self.events.append(("advanced", n, info))

    def finished(self) -> None:
        self.events.append(("finished",))


def test_progress_reports_each_stage_its_total_and_each_step_loss(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], tmp_path: Path
) -> None:
    config = FAST.replace(lora=LoraSpec(top_layers=1, dropout=0.0), checkpoint_every=4)
    progress = _Recorder()
    result = train_adapter(
        make_model(top_layers=1), tokenizer, cases, config, progress=progress, out_dir=tmp_path
    )
    events = progress.events
    assert [e for e in events if e[0] != "advanced"] == [
        ("started", "caching frozen layers", 24, 0),
        ("finished",),
        ("started", "training", 12, 0),
        ("finished",),
    ]
    split = events.index(("finished",))
    assert sum(e[1] for e in events[1:split]) == 24  # every example's frozen pass
    steps = events[split + 2 : -1]
    assert [e[1] for e in steps] == [1] * 12 == [1] * result.steps
    assert [e[2].split()[:2] for e in steps] == [["loss", f"{x:.3f}"] for x in result.loss_history]
    assert all(e[2].endswith(" ex/s") for e in steps)

    # A resumed run's training bar starts where the checkpoint left off.
    def stop_at_6(step: int, loss: float) -> None:
        if step == 6:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_adapter(
            make_model(top_layers=1),
            tokenizer,
            cases,
            config,
            out_dir=tmp_path / "b",
            on_step=stop_at_6,
        )
    resumed = _Recorder()
    train_adapter(
        make_model(top_layers=1), tokenizer, cases, config, progress=resumed, out_dir=tmp_path / "b"
    )
    assert ("started", "training", 12, 4) in resumed.events
    assert sum(1 for e in resumed.events if e[0] == "advanced" and e[2]) == 12 - 4
    # A finished run reports nothing.
    done = _Recorder()
    train_adapter(
        make_model(top_layers=1), tokenizer, cases, config, progress=done, out_dir=tmp_path
    )
    assert done.events == []


def test_corrupt_checkpoint_is_one_clear_error_and_keeps_the_previous_one(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], tmp_path: Path
) -> None:
    config = FAST.replace(epochs=1, checkpoint_every=2)
    train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path)
    newest = tmp_path / "checkpoints" / "step-0000006"
    blob = newest / checkpoint_mod.TRAINER_FILE
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(
        ModelError,
        match=r"step-0000006 is corrupt \(trainer.pt fails its checksum\); delete it to resume from step-0000004",
    ):
        train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path)
    assert newest.exists() and (tmp_path / "checkpoints" / "step-0000004").exists()
    (newest / checkpoint_mod.STATE_FILE).write_text("{")
    with pytest.raises(ModelError, match=r"state\.json is unreadable"):
        train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path)
    # --no-resume starts over.
    result = train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path, resume=False)
    assert result.steps == 6 and result.stats["resumed_from_step"] == 0


def test_a_crash_while_checkpointing_leaves_the_last_good_checkpoint(
    make_model: Callable[..., Any],
    tokenizer: Any,
    cases: list[Case],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = FAST.replace(epochs=1, checkpoint_every=2)
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            Path(f).write_bytes(b"half a file")
            raise OSError("disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000002"]
    result = train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path)
    assert result.stats["resumed_from_step"] == 2 and result.steps == 6


def test_checkpoint_of_a_different_run_is_refused(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case], tmp_path: Path
) -> None:
    config = FAST.replace(epochs=1, max_steps=2, checkpoint_every=1)
    train_adapter(make_model(), tokenizer, cases, config, out_dir=tmp_path)
    with pytest.raises(ModelError, match=r"a different training config \(changed: learning_rate\)"):
        train_adapter(
            make_model(), tokenizer, cases, config.replace(learning_rate=1e-3), out_dir=tmp_path
        )
    with pytest.raises(ModelError, match="different training data"):
        train_adapter(make_model(), tokenizer, cases[:20], config, out_dir=tmp_path)
    state = json.loads((tmp_path / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["identity"]["config"]["learning_rate"] == config.learning_rate


def test_proximal_term_gradient_and_effect(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    from feddx.train.batching import encode_cases
    from feddx.train.trainer import _Trainer

    model = make_model(dropout=0.0)
    g = torch.Generator().manual_seed(0)
    start = {k: torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}
    load_adapter_state(model, start)
    reference = {k: v + 0.5 for k, v in start.items()}
    examples = encode_cases(cases[:4], tokenizer, 320)

    grads = {}
    for mu in (0.0, 0.7):
        trainer = _Trainer(
            model, examples, TrainConfig(proximal_mu=mu, max_grad_norm=0), 0, reference
        )
        trainer.step([[0, 1, 2, 3]], 0)
        grads[mu] = {k: p.grad.clone() for k, p in trainer.params.items()}
        load_adapter_state(model, start)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    proximal_term(params, reference, 0.7).backward()
    for k, p in params.items():
        torch.testing.assert_close(grads[0.7][k] - grads[0.0][k], p.grad)
        torch.testing.assert_close(p.grad, 0.7 * (start[k] - reference[k]))

    # A strong pull keeps the adapter near the reference.
    def distance(mu: float) -> float:
        m = make_model()
        ref = adapter_state(m)
        train_adapter(
            m,
            tokenizer,
            cases,
            FAST.replace(proximal_mu=mu, learning_rate=2e-2),
            proximal_reference=ref,
        )
        return sum(float((v - ref[k]).norm()) for k, v in adapter_state(m).items())

    assert distance(50.0) < 0.5 * distance(0.0)


def test_dp_sgd_reports_a_finite_epsilon_and_leaves_the_model_clean(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    # Adapters on every module of the last layer, which runs pruned to answer positions.
    model = make_model(top_layers=1, target_modules=ALL_LINEAR)
    config = FAST.replace(
        dp=DPConfig(noise_multiplier=1.0, max_grad_norm=0.5),
        batch_size=3,
        lora=LoraSpec(top_layers=1),
    )
    before = adapter_state(model)
    result = train_adapter(model, tokenizer, cases, config)
    assert result.epsilon is not None and 0 < result.epsilon < float("inf")
    assert result.steps == 2 * 8
    assert not _equal(before, adapter_state(model))
    # More noise, less privacy spent.
    quieter = train_adapter(
        make_model(top_layers=1),
        tokenizer,
        cases,
        config.replace(dp=DPConfig(noise_multiplier=3.0)),
    )
    assert quieter.epsilon is not None and quieter.epsilon < result.epsilon
    # Opacus' hooks and per-example state are gone: ordinary training works afterwards.
    assert not any(getattr(p, "grad_sample", None) is not None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    train_adapter(model, tokenizer, cases, FAST.replace(epochs=1, max_steps=1))


def test_dp_survives_empty_poisson_batches(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    # 3 cases, expected batch 1: a third of the logical batches are empty (noise-only steps).
    config = TrainConfig(batch_size=1, epochs=6, dp=DPConfig(), learning_rate=1e-3)
    result = train_adapter(make_model(), tokenizer, cases[:3], config)
    assert result.steps == 18 and result.stats["dp_empty_batches"] > 0
    assert result.epsilon is not None and result.epsilon > 0


def test_bad_inputs_are_clear_errors(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    from train_fixtures import make_tiny_llama  # type: ignore[import-not-found]

    with pytest.raises(DataError, match="empty"):
        train_adapter(make_model(), tokenizer, [], FAST)
    with pytest.raises(DataError, match="no label"):
        train_adapter(make_model(), tokenizer, [*cases, Case(case_id="u")], FAST)
    with pytest.raises(ModelError, match="no LoRA"):
        train_adapter(make_tiny_llama(len(tokenizer)), tokenizer, cases, FAST)
    with pytest.raises(ModelError, match="proximal_reference lacks"):
        train_adapter(
            make_model(), tokenizer, cases, FAST.replace(proximal_mu=1.0), proximal_reference={}
        )
