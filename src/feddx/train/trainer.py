"""The LoRA training loop: ours, visible, and written for speed on CPU.

What makes it fast, compared with Hugging Face's ``Trainer`` on the same model:

- **No vocabulary logits for prompt positions.** The decoder body runs on the whole sequence,
  but the final norm and the LM head run only at answer-predicting positions
  (:mod:`feddx.train.forward`). The loss is computed on answer tokens only.
- **Little padding.** Length bucketing, right padding, no attention mask
  (:mod:`feddx.train.batching`); the padding ratio is reported.
- **Frozen layers run once.** With adapters on the top ``N`` layers only, the layers below run
  once per example, their output is cached (in memory and optionally on disk across federated
  rounds, :mod:`feddx.train.features`), and every step runs the top ``N`` layers only.
- Any causal LM: the split forward (and so the frozen-layer cache) where it reproduces the
  model, the model's own backbone otherwise (:func:`feddx.train.forward.training_runner`).
- Device- and dtype-agnostic: batches go to the model's device, hidden states keep the model's
  dtype, losses are float32 (on this project's CPUs float32 is fastest: bf16 is several times
  slower without bf16 units).

Everything else a real run needs is here too: AdamW with linear warm-up and cosine decay,
gradient accumulation, gradient clipping, seeds (two runs with one seed are identical),
atomic checkpoints with exact resume (:mod:`feddx.train.checkpoint`), a FedProx proximal term,
DP-SGD through Opacus (:mod:`feddx.train.dp`) and progress events for the caller's display
(:class:`TrainProgress`).

:func:`train_adapter` reads as the recipe it is: encode the examples, set up the trainer,
open the checkpoints (resume), cache the frozen layers, run the epochs, save, report.

Loss: with ``loss_reduction="token"`` (default) a step's loss is the mean over all answer
tokens of its micro-batches, exactly Hugging Face's masked loss for one large batch; with
``"example"`` each example's mean token loss counts once. DP uses ``"example"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from feddx.data.schema import Case
from feddx.errors import ConfigError, ModelError
from feddx.model.adapter import (
    ALL_LINEAR,
    AUTO_TARGETS,
    adapter_state,
    first_adapted_layer,
    load_adapter_state,
    lora_parameters,
    lora_spec_of,
)
from feddx.model.decoder import DecoderRunner
from feddx.train.augment import augment_cases, drop_history
from feddx.train.batching import (
    Batch,
    Example,
    bucketed_batches,
    collate,
    encode_cases,
    poisson_batches,
    split_by_length,
)
from feddx.train.checkpoint import CheckpointStore, TrainState, set_rng_state
from feddx.train.config import LrSchedule, TrainConfig
from feddx.train.dp import DPSGD
from feddx.train.features import ActivationCache, frozen_fingerprint
from feddx.train.forward import check_model_once, reduce_losses, training_runner

log = logging.getLogger(__name__)

# Config fields that change neither the numbers nor the order of a run: a checkpoint written
# under other values of these can still be resumed.
_RESUME_NEUTRAL = {"checkpoint_every", "activation_cache_max_mb", "gradient_checkpointing"}


@dataclass
class TrainResult:
    """What a training run did.

    ``steps``/``examples`` count optimizer steps and example passes since the run began
    (across resumes); ``mean_loss`` is the loss over all of them, in the unit of
    ``loss_reduction``; ``seconds`` is wall time including prompt rendering and activation
    caching; ``epsilon`` is the DP-SGD privacy spent at ``dp.delta`` (``None`` without DP).
    ``stats`` holds measurements (padding ratio, cached examples, tokens per path ...).
    """

    steps: int
    examples: int
    mean_loss: float
    seconds: float
    examples_per_second: float
    epsilon: float | None
    loss_history: list[float] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def proximal_term(
    params: dict[str, torch.nn.Parameter], reference: dict[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's ``mu / 2 * sum ||w - w_ref||^2`` over the LoRA weights (differentiable)."""
    total = torch.zeros((), device=next(iter(params.values())).device)
    for key, p in params.items():
        total = total + (p - reference[key].to(p.dtype)).pow(2).sum()
    return 0.5 * mu * total


def _check_reference(
    params: dict[str, torch.nn.Parameter], reference: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    if reference is None:
        # FedProx without a reference means "stay near where this run started".
        return {k: p.detach().clone() for k, p in params.items()}
    missing = sorted(set(params) - set(reference))
    if missing:
        raise ModelError(
            f"proximal_reference lacks {len(missing)} LoRA tensors (e.g. {missing[0]})"
        )
    out = {}
    for key, p in params.items():
        ref = reference[key]
        if tuple(ref.shape) != tuple(p.shape):
            raise ModelError(
                f"proximal_reference[{key}] has shape {tuple(ref.shape)}, not {tuple(p.shape)}"
            )
        out[key] = ref.detach().to(device=p.device, dtype=p.dtype)
    return out


def lr_at(
    step: int, total: int, warmup: int, base: float, schedule: LrSchedule = "cosine"
) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay towards zero at ``total`` (or
    ``base`` to the end for the ``"constant"`` schedule)."""
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _data_fingerprint(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.input_ids, dtype=np.int32).tobytes())
        h.update(b"|")
        h.update(np.asarray(e.answer, dtype=np.int32).tobytes())
        h.update(b"\n")
    return h.hexdigest()[:24]


@dataclass
class _Plan:
    """How the data is cut into optimizer steps."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    sample_rate: float  # DP only


def _plan(n: int, config: TrainConfig) -> _Plan:
    logical = config.batch_size * config.grad_accum
    if config.dp is not None:
        steps_per_epoch = math.ceil(n / logical)
    else:
        steps_per_epoch = math.ceil(math.ceil(n / config.batch_size) / config.grad_accum)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return _Plan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=math.ceil(config.warmup_ratio * total),
        sample_rate=min(1.0, logical / n),
    )


def _epoch_steps(
    examples: Sequence[Example], config: TrainConfig, plan: _Plan, epoch: int
) -> list[list[list[int]]]:
    """Epoch ``epoch`` as steps, each a list of micro-batches of example indices. A pure
    function of (seed, epoch, data): resuming replays exactly the same order."""
    lengths = [len(e) for e in examples]
    if config.dp is not None:
        logical = poisson_batches(
            len(examples), plan.sample_rate, plan.steps_per_epoch, seed=config.seed, epoch=epoch
        )
        return [split_by_length(b, lengths, config.batch_size) for b in logical]
    batches = bucketed_batches(
        lengths, config.batch_size, config.bucket_batches, seed=config.seed, epoch=epoch
    )
    ga = config.grad_accum
    return [batches[i : i + ga] for i in range(0, len(batches), ga)]


class TrainProgress(Protocol):
    """What the training loop reports as it goes, for a progress display passed in by the
    caller (the CLI's rich bars: :mod:`feddx.cli.progress`). A run has up to two stages,
    ``"caching frozen layers"`` (``total``: examples) and ``"training"`` (``total``: optimizer
    steps; ``done``: the steps a resumed run already has); each is started, advanced and
    finished in turn."""

    def started(self, stage: str, total: int, done: int = 0) -> None:
        """A stage begins: ``total`` units of work, ``done`` of them already done."""

    def advanced(self, n: int = 1, info: str = "") -> None:
        """``n`` more units of the current stage are done; ``info`` is a short status (the
        step's loss and throughput), never case data."""

    def finished(self) -> None:
        """The current stage is over."""


class NoProgress:
    """The default :class:`TrainProgress`: reports nothing."""

    def started(self, stage: str, total: int, done: int = 0) -> None:
        pass

    def advanced(self, n: int = 1, info: str = "") -> None:
        pass

    def finished(self) -> None:
        pass


class _Trainer:
    """One call of :func:`train_adapter` (state that would otherwise be a dozen arguments)."""

    def __init__(
        self,
        model: Any,
        examples: list[Example],
        config: TrainConfig,
        pad_id: int,
        proximal_reference: dict[str, torch.Tensor] | None,
    ) -> None:
        self.model = model
        self.examples = examples
        self.config = config
        self.pad_id = pad_id
        self.params = lora_parameters(model)
        # The split path caches the layers below the adapters; the general one runs them all.
        self.runner = training_runner(model, examples)
        self.split = first_adapted_layer(model) if self.runner.path == "split" else 0
        self.plan = _plan(len(examples), config)
        self.reduction = "example" if config.dp is not None else config.loss_reduction
        self.reference = (
            _check_reference(self.params, proximal_reference) if config.proximal_mu > 0 else None
        )
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.cache: ActivationCache | None = None
        self.dp: DPSGD | None = None
        self.counters = {
            "slots": 0,
            "real_tokens": 0,
            "answer_tokens": 0,
            "trainable_slots": 0,
            "dp_empty_batches": 0,
        }

    # --- inputs --------------------------------------------------------------------------
    def layer_input(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """The hidden states entering the first trainable layer, and that layer's index."""
        if self.cache is not None:
            return self.cache.batch_input(batch.indices), self.split
        return self.runner.embed(batch.input_ids), 0

    def micro_batch_loss(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, Batch]:
        batch = collate(self.examples, indices, self.pad_id).to(self.runner.device)
        hidden, start = self.layer_input(batch)
        losses = self.runner.answer_losses(
            hidden, start, batch, checkpoint=bool(self.config.gradient_checkpointing)
        )
        total, per_example = reduce_losses(losses, batch, self.reduction)
        self.counters["slots"] += batch.n_slots
        self.counters["real_tokens"] += batch.n_tokens
        self.counters["answer_tokens"] += batch.n_answer_tokens
        self.counters["trainable_slots"] += batch.n_slots
        return total, per_example, batch

    # --- one optimizer step --------------------------------------------------------------
    def step(self, micro: list[list[int]], step: int) -> tuple[float, float, int]:
        """Run one optimizer step; returns (loss sum, loss count, examples)."""
        if self.dp is not None:
            return self._dp_step(micro, step)
        denom = float(
            sum(len(self.examples[i].answer) for mb in micro for i in mb)
            if self.reduction == "token"
            else sum(len(mb) for mb in micro)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for indices in micro:
            total, _, _ = self.micro_batch_loss(indices)
            (total / denom).backward()
            loss_sum += float(total.detach())
        self._add_proximal_gradient()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.max_grad_norm)
        self._set_lr(step)
        self.optimizer.step()
        return loss_sum, denom, sum(len(mb) for mb in micro)

    def _dp_step(self, micro: list[list[int]], step: int) -> tuple[float, float, int]:
        assert self.dp is not None
        loss_sum, n = 0.0, 0
        if not micro:
            self.counters["dp_empty_batches"] += 1
        for j, indices in enumerate(micro):
            _, per_example, _ = self.micro_batch_loss(indices)
            # Mean over the micro-batch: Opacus ("mean" reduction) rescales each example's
            # gradient by the micro-batch size, giving the per-example gradients it clips.
            with warnings.catch_warnings():
                # Opacus' module hooks also fire where a layer's input needs no gradient
                # (cached activations); that is expected and harmless.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                per_example.mean().backward()
            loss_sum += float(per_example.detach().sum())
            n += len(indices)
            if j < len(micro) - 1:
                self.dp.accumulate()
        self.dp.finish(empty=not micro)
        self._add_proximal_gradient()
        self._set_lr(step)
        self.dp.step()
        return loss_sum, float(n), n

    def _add_proximal_gradient(self) -> None:
        # d/dw of mu/2 ||w - w_ref||^2 is mu (w - w_ref): added directly (no graph needed). It
        # is data-independent, so under DP it is added after the noise at no privacy cost.
        if self.reference is None:
            return
        mu = self.config.proximal_mu
        with torch.no_grad():
            for key, p in self.params.items():
                delta = (p - self.reference[key]) * mu
                p.grad = delta if p.grad is None else p.grad.add_(delta)

    def _set_lr(self, step: int) -> None:
        lr = lr_at(
            step,
            self.plan.total_steps,
            self.plan.warmup_steps,
            self.config.learning_rate,
            self.config.lr_schedule,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def _identity(trainer: _Trainer) -> dict[str, Any]:
    config = {k: v for k, v in trainer.config.to_dict().items() if k not in _RESUME_NEUTRAL}
    if list(config["lora"]["target_modules"]) in ([AUTO_TARGETS], [ALL_LINEAR]):
        # The modules as attached ("auto" for Llama is q_proj/v_proj, the default before
        # "auto" existed), so a checkpoint written under the old default still resumes.
        config["lora"]["target_modules"] = list(lora_spec_of(trainer.model).target_modules)
    if config.get("answer_loss") == "vocabulary":
        # The default before the option existed: checkpoints written then still resume.
        del config["answer_loss"]
    if not config.get("augment", {}).get("copies"):
        # Likewise for augmentation, which is off by default (the data fingerprint covers it).
        config.pop("augment", None)
    lora = sorted((k, list(p.shape)) for k, p in trainer.params.items())
    return {
        "model": frozen_fingerprint(trainer.runner, trainer.runner.n_layers),
        "lora": hashlib.sha256(json.dumps(lora).encode()).hexdigest()[:24],
        "data": _data_fingerprint(trainer.examples),
        "config": config,
    }


def _epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(n), float(q), int(s)) for n, q, s in history]
    return float(accountant.get_epsilon(delta=delta)) if accountant.history else 0.0


def train_adapter(
    model: Any,
    tokenizer: Any,
    cases: Sequence[Case],
    config: TrainConfig,
    *,
    out_dir: Path | None = None,
    resume: bool = True,
    progress: TrainProgress | None = None,
    proximal_reference: dict[str, torch.Tensor] | None = None,
    feature_cache_dir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    candidates: Sequence[str] | None = None,
) -> TrainResult:
    """Fine-tune the LoRA adapter already attached to ``model`` on ``cases``.

    Parameters
    ----------
    model, tokenizer
        A peft model from :func:`~feddx.model.adapter.attach_lora` and its tokenizer. Only
        the LoRA weights change.
    cases
        Labelled cases, rendered with :func:`~feddx.model.prompt.render_prompt` and answered
        with :func:`~feddx.model.prompt.answer_ids`.
    out_dir
        Where checkpoints go (``out_dir/checkpoints``): every ``config.checkpoint_every`` steps
        and at the end. ``None``: no checkpoints.
    resume
        Continue from the newest checkpoint in ``out_dir`` (``False``: delete them and start
        over). A finished run returns its result without training again.
    progress
        Receives the loop's progress events (:class:`TrainProgress`); default: none.
    proximal_reference
        FedProx anchor (the global adapter's :func:`~feddx.model.adapter.adapter_state`) when
        ``config.proximal_mu > 0``; defaults to the adapter's starting weights.
    feature_cache_dir
        Directory for the frozen-layer activation cache, shared across runs and federated
        rounds (entries are keyed by base weights and token ids, so sharing is safe).
    on_step
        Called as ``on_step(step, loss)`` after every optimizer step (and checkpoint).
    candidates
        The candidate diagnoses, needed by ``config.answer_loss == "candidates"`` (every
        training label must be among them) and ignored otherwise.

    Raises :class:`~feddx.errors.DataError` for an empty dataset or unlabelled cases,
    :class:`~feddx.errors.ConfigError` for a config that needs what was not given, and
    :class:`~feddx.errors.ModelError` for a model without LoRA, an unsupported architecture,
    or a corrupt or mismatched checkpoint.
    """
    started = time.perf_counter()
    progress = progress or NoProgress()
    # Setup: examples, the step plan, the optimizer, then where a previous run stopped.
    examples, n_augmented = _encode_examples(cases, tokenizer, config, candidates)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    _seed_all(config.seed)
    trainer = _Trainer(model, examples, config, pad_id, proximal_reference)
    # The split forward must match the model's own forward (guards unsupported architectures).
    self_check = check_model_once(trainer.runner, examples[0], pad_id)
    run = _Run(trainer, started)
    if out_dir is not None:
        run.open_checkpoints(out_dir, resume)
    run.stats.update(
        {
            "split_layer": float(trainer.split),
            "n_layers": float(trainer.runner.n_layers),
            "self_check_max_rel_diff": self_check,
            "pruned_last_layer": float(trainer.runner.prune_last_layer),
            "split_forward": float(trainer.runner.path == "split"),
            "resumed_from_step": float(run.state.step),
            "total_steps": float(trainer.plan.total_steps),
            "augmented_examples": float(n_augmented),
        }
    )
    if run.finished:
        return run.result()

    # Train: frozen layers once, then the epochs; save where the run ended.
    with _training_session(trainer):
        if trainer.split > 0:
            _cache_frozen_layers(run, feature_cache_dir, progress)
        _start_training(run)
        _train_epochs(run, progress, on_step)
        run.checkpoint()
    return run.result()


def _encode_examples(
    cases: Sequence[Case],
    tokenizer: Any,
    config: TrainConfig,
    candidates: Sequence[str] | None,
) -> tuple[list[Example], int]:
    """The training examples (with ``config.augment``'s copies) and how many copies that
    added."""
    if config.answer_loss == "candidates" and candidates is None:
        raise ConfigError(
            "training config: answer_loss 'candidates' needs the candidate list "
            "(train_adapter(candidates=...))"
        )
    # History dropout first, so that an augmented copy keeps its case's (dropped) history.
    cases = drop_history(cases, config.history_dropout, config.seed)
    augmented = augment_cases(cases, config.augment, config.seed)
    examples = encode_cases(
        augmented,
        tokenizer,
        config.max_prompt_tokens,
        candidates if config.answer_loss == "candidates" else None,
    )
    return examples, len(augmented) - len(cases)


class _Run:
    """The bookkeeping of one :func:`train_adapter` call around its :class:`_Trainer`: where
    the run stands (resumable), its checkpoints, and the figures it reports."""

    def __init__(self, trainer: _Trainer, started: float) -> None:
        self.trainer = trainer
        self.started = started
        self.store: CheckpointStore | None = None
        self.state = TrainState()
        self.rng: dict[str, Any] | None = None  # the RNG state a resumed run continues from
        self.stats: dict[str, float] = {}

    @property
    def finished(self) -> bool:
        return self.state.step >= self.trainer.plan.total_steps

    def seconds(self) -> float:
        """Training time so far, across the invocations of a resumed run."""
        return self.state.seconds + (time.perf_counter() - self.started)

    def open_checkpoints(self, out_dir: Path, resume: bool) -> None:
        """Bind the run to ``out_dir``'s checkpoints; continue from the newest when
        ``resume`` (its adapter, optimizer, position and RNG), else delete them."""
        trainer = self.trainer
        self.store = CheckpointStore(out_dir, _identity(trainer))
        if not resume:
            self.store.clear()
            return
        checkpoint = self.store.latest()
        if checkpoint is None:
            return
        load_adapter_state(trainer.model, checkpoint.adapter)
        trainer.optimizer.load_state_dict(checkpoint.optimizer)
        self.state, self.rng = checkpoint.state, checkpoint.rng
        log.info(
            "resuming from %s (step %d of %d)",
            checkpoint.path.name,
            self.state.step,
            trainer.plan.total_steps,
        )

    def checkpoint(self) -> None:
        """Save a resumable checkpoint of the run as it stands (if it has an ``out_dir``)."""
        if self.store is None:
            return
        trainer = self.trainer
        snapshot = TrainState(**{**asdict(self.state), "seconds": self.seconds()})
        self.store.save(snapshot, adapter_state(trainer.model), trainer.optimizer.state_dict())

    def result(self) -> TrainResult:
        state, trainer = self.state, self.trainer
        seconds = self.seconds()
        dp = trainer.config.dp
        epsilon = _epsilon(state.dp_history, dp.delta) if dp is not None else None
        slots = trainer.counters["slots"]
        self.stats["padding_ratio"] = (
            (1 - trainer.counters["real_tokens"] / slots) if slots else 0.0
        )
        self.stats.update({k: float(v) for k, v in trainer.counters.items()})
        return TrainResult(
            steps=state.step,
            examples=state.examples,
            mean_loss=state.loss_sum / state.loss_count if state.loss_count else float("nan"),
            seconds=seconds,
            examples_per_second=state.examples / seconds if seconds > 0 else 0.0,
            epsilon=epsilon,
            loss_history=list(state.loss_history),
            stats=self.stats,
        )


@contextmanager
def _training_session(trainer: _Trainer) -> Iterator[None]:
    """Leave the model as it was found, however training ends: module modes restored, the
    DP wrapper removed, gradients dropped.

    Hugging Face's own activation checkpointing (``model.gradient_checkpointing_enable()``)
    is switched off meanwhile: its reentrant form gives no gradient to a layer whose input
    needs none (the cached frozen trunk), so adapters would silently not train. The trainer
    checkpoints layers itself (``config.gradient_checkpointing``).
    """
    modes = {m: m.training for m in trainer.model.modules()}
    hf_flags = {
        m: m.gradient_checkpointing
        for m in trainer.model.modules()
        if isinstance(getattr(m, "gradient_checkpointing", None), bool)
    }
    if any(hf_flags.values()):
        log.info(
            "Hugging Face gradient checkpointing is off during training (the trainer's own applies)"
        )
    for module in hf_flags:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module, flag in hf_flags.items():
            module.gradient_checkpointing = flag
        if trainer.dp is not None:
            trainer.dp.close()
        for module, mode in modes.items():
            module.training = mode
        for p in trainer.params.values():
            p.grad = None


def _cache_frozen_layers(
    run: _Run, feature_cache_dir: Path | None, progress: TrainProgress
) -> None:
    """Run the layers below the adapters once per example and keep their output (in memory
    within the budget when later epochs will reuse it, and in ``feature_cache_dir``)."""
    trainer, config = run.trainer, run.trainer.config
    assert isinstance(trainer.runner, DecoderRunner)  # split > 0 only on the split path
    epochs_left = config.epochs - run.state.epoch
    keep = epochs_left > 1 or feature_cache_dir is not None
    t0 = time.perf_counter()
    trainer.cache = ActivationCache(
        trainer.runner,
        trainer.examples,
        trainer.split,
        dtype=config.activation_cache_dtype,
        max_bytes=(config.activation_cache_max_mb << 20) if keep else 0,
        directory=feature_cache_dir,
    )
    progress.started("caching frozen layers", len(trainer.examples))
    trainer.cache.build(on_progress=lambda n: progress.advanced(n))
    progress.finished()
    run.stats["cache_seconds"] = time.perf_counter() - t0
    run.stats.update({f"cache_{k}": float(v) for k, v in trainer.cache.stats.items()})
    run.stats["cache_memory_mb"] = trainer.cache.memory_bytes / 2**20


def _start_training(run: _Run) -> None:
    """Training mode, the DP-SGD wrapper, and the RNG state the first step draws from."""
    trainer, config, plan = run.trainer, run.trainer.config, run.trainer.plan
    trainer.model.train()
    if config.dp is not None:
        trainer.dp = DPSGD(
            trainer.model,
            list(trainer.params.values()),
            trainer.optimizer,
            config.dp,
            sample_rate=plan.sample_rate,
            expected_batch_size=plan.sample_rate * len(trainer.examples),
            history=run.state.dp_history,
        )
    # Seed (or restore) the RNG right before the loop: dropout and DP noise then draw the same
    # numbers in a resumed run as in an uninterrupted one.
    if run.rng is not None:
        set_rng_state(run.rng)
    else:
        _seed_all(config.seed)


def _train_epochs(
    run: _Run, progress: TrainProgress, on_step: Callable[[int, float], None] | None
) -> None:
    """The optimizer steps from where the run stands to the plan's end, epoch by epoch in the
    seeded order of :func:`_epoch_steps`, with periodic checkpoints."""
    trainer, state, config = run.trainer, run.state, run.trainer.config
    total = trainer.plan.total_steps
    progress.started("training", total, done=state.step)
    loop_start, loop_examples = time.perf_counter(), 0
    while state.step < total:
        steps = _epoch_steps(trainer.examples, config, trainer.plan, state.epoch)
        for k in range(state.step_in_epoch, len(steps)):
            if state.step >= total:
                break
            loss_sum, count, n = trainer.step(steps[k], state.step)
            step_loss = loss_sum / count if count else float("nan")
            if not math.isfinite(step_loss) and count:
                raise ModelError(
                    f"training diverged at step {state.step + 1} (loss {step_loss}); "
                    "lower learning_rate or check the data"
                )
            _record_step(state, trainer, k, len(steps), loss_sum, count, n, step_loss)
            loop_examples += n
            rate = loop_examples / max(1e-9, time.perf_counter() - loop_start)
            progress.advanced(1, info=f"loss {step_loss:.3f}  {rate:.1f} ex/s")
            every = config.checkpoint_every
            if every and state.step % every == 0 and state.step < total:
                run.checkpoint()
            if on_step is not None:
                on_step(state.step, step_loss)
        if state.step_in_epoch == 0 and state.epoch >= config.epochs:
            break
    progress.finished()
    run.stats["loop_seconds"] = time.perf_counter() - loop_start


def _record_step(
    state: TrainState,
    trainer: _Trainer,
    k: int,
    steps_in_epoch: int,
    loss_sum: float,
    count: float,
    n: int,
    step_loss: float,
) -> None:
    """Advance the resumable position and the running loss past step ``k`` of the epoch."""
    state.step += 1
    state.step_in_epoch = k + 1
    state.examples += n
    state.loss_sum += loss_sum
    state.loss_count += count
    state.loss_history.append(step_loss)
    if trainer.dp is not None:
        state.dp_history = trainer.dp.history
    if state.step_in_epoch == steps_in_epoch:
        state.epoch, state.step_in_epoch = state.epoch + 1, 0


__all__ = ["NoProgress", "TrainProgress", "TrainResult", "lr_at", "proximal_term", "train_adapter"]
