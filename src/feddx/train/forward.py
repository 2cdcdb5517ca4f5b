"""The training losses over the forward paths of :mod:`feddx.model.decoder`.

Hugging Face's ``model(input_ids, labels=...)`` computes vocabulary logits for every position
and then masks most of them away; for SmolLM2 (a 49k x 576 head) that is a quarter of the
forward FLOPs spent on prompt positions whose loss is never used. Here the final norm and LM
head run only on the hidden states at answer-predicting positions, on either path; on the
split path the last layer can be pruned to those positions too. :func:`training_runner` picks
the path; :func:`check_equivalence` compares it with the model's own forward once per run, so
an architecture that differs in some detail is refused instead of trained wrongly.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from feddx.errors import ModelError
from feddx.model.decoder import (
    BackboneRunner,
    CausalLMRunner,
    DecoderRunner,
    choose_runner,
    split_tolerance,
)
from feddx.train.batching import Batch, Example, collate

log = logging.getLogger(__name__)


class _AnswerLosses(CausalLMRunner):
    """The losses at answer positions, over either forward path (a mixin of the runners)."""

    def answer_states(
        self, hidden: torch.Tensor, start: int, batch: Batch, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """Run layers ``start..`` on ``hidden`` and return the last layer's output at the
        batch's answer-predicting positions, ``[n, H]``."""
        out = self.final_states(hidden, start, checkpoint=checkpoint)
        return out[batch.rows, batch.cols]

    def answer_logits(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Vocabulary logits ``[n, V]`` at the answer-predicting positions of the last layer's
        full output ``hidden``."""
        return self.logits(hidden[batch.rows, batch.cols])

    def token_losses(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of every answer token ``[n]`` (``hidden`` is the last layer's output)."""
        return F.cross_entropy(self.answer_logits(hidden, batch), batch.targets, reduction="none")

    def answer_losses(
        self, hidden: torch.Tensor, start: int, batch: Batch, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """Float32 cross-entropy ``[n]`` of every answer token, from the input of layer
        ``start``: over the vocabulary, or over ``batch.choices`` when the batch has them."""
        states = self.answer_states(hidden, start, batch, checkpoint=checkpoint)
        if batch.choices is None:
            return F.cross_entropy(self.logits(states), batch.targets, reduction="none")
        return self.choice_losses(states, batch.choices, batch.targets)

    def choice_losses(
        self, states: torch.Tensor, choices: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy ``[n]`` of ``targets`` under a softmax restricted to each row's
        ``choices`` (``[n, W]``, ``-1`` padded). Only the LM-head rows of those tokens are
        used, so this costs ``W`` rather than the vocabulary's size per position."""
        normed = self.norm(states).float()
        safe = choices.clamp(min=0)
        weight = self.lm_head.weight[safe].float()  # [n, W, H]
        logits = torch.einsum("nh,nwh->nw", normed, weight)
        bias = getattr(self.lm_head, "bias", None)
        if bias is not None:
            logits = logits + bias[safe].float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        logits = logits.masked_fill(choices < 0, float("-inf"))
        gold = (choices == targets[:, None]).float().argmax(dim=1)
        return F.cross_entropy(logits, gold, reduction="none")


class TrainingRunner(_AnswerLosses, DecoderRunner):
    """The split runner plus what training needs: the last layer pruned to answer positions
    and the losses at those positions."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.can_prune_last_layer = self.layer_types is None and _prunable(
            self.layers[-1], self.config
        )
        self.prune_last_layer = False  # switched on by check_model_once where it verifies

    def answer_states(
        self, hidden: torch.Tensor, start: int, batch: Batch, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """As :meth:`_AnswerLosses.answer_states`; with ``prune_last_layer`` (set by
        :func:`check_model_once` where it verifies), the last layer computes keys and values
        for every position but queries, attention output, MLP and residual only at answer
        positions: nothing else of it is ever read.
        """
        rotary = self.rotary(hidden)
        if not self.prune_last_layer or start >= self.n_layers:
            out = self.run_layers(
                hidden, start, self.n_layers, checkpoint=checkpoint, rotary=rotary
            )
            return out[batch.rows, batch.cols]
        hidden = self.run_layers(
            hidden, start, self.n_layers - 1, checkpoint=checkpoint, rotary=rotary
        )
        return _last_layer_at(self.layers[-1], hidden, batch, rotary[1])


class GeneralTrainingRunner(_AnswerLosses, BackboneRunner):
    """The general-path runner plus the losses (no layer can be skipped or pruned)."""

    can_prune_last_layer = False
    prune_last_layer = False


AnyTrainingRunner = TrainingRunner | GeneralTrainingRunner


def training_runner(model: Any, examples: Sequence[Example]) -> AnyTrainingRunner:
    """The runner :func:`~feddx.model.decoder.choose_runner` picks for training ``model`` on
    ``examples`` (the split one where it reproduces the model, else the general one)."""
    probe = examples[0].input_ids[:24]
    longest = max(len(e) for e in examples)
    chosen = choose_runner(model, probe, longest)
    return TrainingRunner(model) if chosen.path == "split" else GeneralTrainingRunner(model)


def _prunable(layer: Any, config: Any) -> bool:
    """Whether :func:`_last_layer_at` knows this layer's structure (Llama-style attention with
    rotary embeddings, no extra q/k norms, no attention dropout)."""
    attn = getattr(layer, "self_attn", None)
    parts = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    return (
        attn is not None
        and all(hasattr(attn, p) for p in parts)
        and not any(hasattr(attn, p) for p in ("q_norm", "k_norm", "sliding_window"))
        and all(hasattr(layer, p) for p in ("input_layernorm", "post_attention_layernorm", "mlp"))
        and not getattr(config, "attention_dropout", 0.0)
        and hasattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb")
    )


def _last_layer_at(layer: Any, hidden: torch.Tensor, batch: Batch, tables: Any) -> torch.Tensor:
    """The decoder layer ``layer`` evaluated only at the answer positions of ``batch``.

    Queries are laid out ``[B, A, H]`` (``A``: most answer tokens in a row; unused slots are
    padding whose outputs are never read), so every module still sees a leading batch
    dimension, as Opacus' per-example gradients require.
    """
    attn = layer.self_attn
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    b, length, _ = hidden.shape
    counts = torch.bincount(batch.rows, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.rows.numel(), device=hidden.device) - starts[batch.rows]
    width = int(counts.max())
    pos = torch.zeros(b, width, dtype=torch.long, device=hidden.device)
    pos[batch.rows, slot] = batch.cols
    residual = hidden.new_zeros(b, width, hidden.shape[-1])
    residual[batch.rows, slot] = hidden[batch.rows, batch.cols]

    normed = layer.input_layernorm(hidden)
    d = attn.head_dim
    q = attn.q_proj(layer.input_layernorm(residual)).view(b, width, -1, d).transpose(1, 2)
    k = attn.k_proj(normed).view(b, length, -1, d).transpose(1, 2)
    v = attn.v_proj(normed).view(b, length, -1, d).transpose(1, 2)
    cos, sin = tables
    q, _ = rope(q, q, cos[0][pos], sin[0][pos])
    _, k = rope(k, k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    visible = (
        torch.arange(length, device=hidden.device)[None, None, None, :] <= pos[:, None, :, None]
    )
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=attn.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(b, width, -1))
    h = residual + out
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h[batch.rows, slot]


def reduce_losses(
    token_losses: torch.Tensor, batch: Batch, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token losses (``reduction="token"``) or of per-example mean losses
    (``"example"``), plus the per-example mean losses ``[B]`` (what DP-SGD clips)."""
    n_rows = len(batch.indices)
    sums = torch.zeros(n_rows, dtype=token_losses.dtype, device=token_losses.device)
    sums = sums.index_add(0, batch.rows, token_losses)
    counts = torch.bincount(batch.rows, minlength=n_rows).to(token_losses.dtype)
    per_example = sums / counts
    total = token_losses.sum() if reduction == "token" else per_example.sum()
    return total, per_example


_CHECKED = "_feddx_split_forward_checked"


def probe_batch(example: Example, pad_id: int) -> Batch:
    """Two short sequences cut from ``example`` (24 and 15 tokens, 4 "answer" positions each):
    enough to exercise every piece of the split forward, including padding, at a few percent
    of the cost of a real example."""
    ids = example.input_ids
    probes = []
    for n in (min(24, len(ids) - 1), min(15, len(ids) - 2)):
        if n < 2:
            continue
        a = min(4, n - 1)
        probes.append(Example(tuple(ids[:n]), tuple(ids[n - a + 1 : n + 1])))
    return collate(probes or [example], range(len(probes) or 1), pad_id)


def check_model_once(runner: AnyTrainingRunner, example: Example, pad_id: int) -> float:
    """:func:`check_equivalence` on a :func:`probe_batch`, remembered on the model (per
    forward path) so that repeated training calls (federated rounds) pay for it once. Also
    decides whether the last layer can be pruned to answer positions (only where that, too,
    matches)."""
    key = f"{_CHECKED}_{runner.path}"
    done = runner.model.__dict__.get(key)
    if not isinstance(done, tuple):
        batch = probe_batch(example, pad_id).to(runner.device)
        diff = check_equivalence(runner, batch, prune=False)
        prune = False
        if runner.can_prune_last_layer:
            try:
                check_equivalence(runner, batch, prune=True)
                prune = True
            except ModelError:
                log.info("last-layer pruning does not match this model; running it in full")
        done = (diff, prune)
        runner.model.__dict__[key] = done
    runner.prune_last_layer = done[1]
    return float(done[0])


def check_equivalence(
    runner: AnyTrainingRunner,
    batch: Batch,
    *,
    prune: bool = False,
    tolerance: float | None = None,
) -> float:
    """Compare the runner's forward (split: with or without last-layer pruning; general: its
    head and softcapping) with the model's own forward on ``batch``, in eval mode.

    Returns the largest absolute logit difference relative to the logits' scale; raises
    :class:`ModelError` above ``tolerance`` (default: :func:`~feddx.model.decoder.tolerance`
    of the model's dtype).
    """
    tolerance = split_tolerance(runner.dtype) if tolerance is None else tolerance
    model = runner.model
    modes = {m: m.training for m in model.modules()}
    saved = runner.prune_last_layer
    model.eval()
    try:
        runner.prune_last_layer = prune
        with torch.no_grad():
            states = runner.answer_states(runner.embed(batch.input_ids), 0, batch)
            ours = runner.logits(states)
            mask = torch.zeros_like(batch.input_ids)
            for r, n in enumerate(batch.lengths):
                mask[r, :n] = 1
            ref = model(input_ids=batch.input_ids, attention_mask=mask).logits
            ref = ref[batch.rows, batch.cols].float()
    finally:
        runner.prune_last_layer = saved
        for module, mode in modes.items():
            module.training = mode
    scale = float(ref.abs().max()) + 1.0
    diff = float((ours - ref).abs().max()) / scale
    if not diff <= tolerance:
        raise ModelError(
            f"{type(model).__name__}: the layer-by-layer forward differs from the model's own "
            f"forward (relative logit difference {diff:.2e}); this architecture is not supported "
            "by feddx's trainer"
        )
    return diff
