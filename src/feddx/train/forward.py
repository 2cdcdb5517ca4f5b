"""Run a causal LM's decoder in pieces, and its LM head only where the loss needs it.

Hugging Face's ``model(input_ids, labels=...)`` computes vocabulary logits for every position
and then masks most of them away; for SmolLM2 (a 49k x 576 head) that is a quarter of the
forward FLOPs spent on prompt positions whose loss is never used. Here the decoder body runs
as ``embeddings -> layers[a:b] -> ...`` and the final norm and LM head run only on the hidden
states at answer-predicting positions.

Splitting the layer stack is also what lets the trainer cache the output of frozen bottom
layers and start later epochs at layer ``a``. This relies on the Llama-style layout
(``model.embed_tokens``, ``model.layers``, ``model.norm``, ``model.rotary_emb``, ``lm_head``)
shared by Llama, Mistral, Qwen2, SmolLM and others; :func:`check_equivalence` compares the
split forward with the model's own forward once per run, so an architecture that differs in
some detail is refused instead of trained wrongly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from feddx.errors import ModelError
from feddx.train.batching import Batch


class DecoderRunner:
    """The pieces of a (peft-wrapped) causal LM, callable one range of layers at a time."""

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone: Any = getattr(base, "model", None)
        missing = [
            name
            for name in ("embed_tokens", "layers", "norm", "rotary_emb")
            if getattr(backbone, name, None) is None
        ]
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        if missing or head is None:
            what = ", ".join([f"model.{m}" for m in missing] + ([] if head else ["lm_head"]))
            raise ModelError(
                f"{type(base).__name__} lacks {what}: feddx's trainer needs a Llama-style "
                "decoder (Llama, Mistral, Qwen2, SmolLM, ...)"
            )
        self.model = model
        self.embed_tokens = backbone.embed_tokens
        self.layers = backbone.layers
        self.norm = backbone.norm
        self.rotary_emb = backbone.rotary_emb
        self.lm_head = head
        self.n_layers = len(self.layers)
        self.hidden_size = int(base.config.hidden_size)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, H]`` (the input of layer 0)."""
        return self.embed_tokens(input_ids)

    def run_layers(
        self, hidden: torch.Tensor, start: int, end: int, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """Decoder layers ``start..end-1`` on right-padded hidden states ``[B, L, H]``.

        No attention mask: with right padding and causal attention, real positions never see
        the padding, and position ids are ``0..L-1`` in every row.
        """
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rotary = self.rotary_emb(hidden, positions)
        for layer in self.layers[start:end]:
            if checkpoint and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(
                    _call_layer, layer, hidden, positions, rotary, use_reentrant=False
                )
            else:
                hidden = _call_layer(layer, hidden, positions, rotary)
        return hidden

    def answer_logits(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Vocabulary logits ``[n, V]`` at the batch's answer-predicting positions only.

        The final norm works per position, so gathering before it is exact.
        """
        picked = hidden[batch.rows, batch.cols]
        return self.lm_head(self.norm(picked)).float()

    def token_losses(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of every answer token ``[n]`` (``hidden`` is the last layer's output)."""
        return F.cross_entropy(self.answer_logits(hidden, batch), batch.targets, reduction="none")


def _call_layer(
    layer: Any, hidden: torch.Tensor, positions: torch.Tensor, rotary: Any
) -> torch.Tensor:
    out = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
    # transformers < 5 returned a tuple from decoder layers.
    return out[0] if isinstance(out, tuple) else out


def reduce_losses(
    token_losses: torch.Tensor, batch: Batch, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token losses (``reduction="token"``) or of per-example mean losses
    (``"example"``), plus the per-example mean losses ``[B]`` (what DP-SGD clips)."""
    n_rows = len(batch.indices)
    sums = torch.zeros(n_rows, dtype=token_losses.dtype).index_add(0, batch.rows, token_losses)
    counts = torch.bincount(batch.rows, minlength=n_rows).to(token_losses.dtype)
    per_example = sums / counts
    total = token_losses.sum() if reduction == "token" else per_example.sum()
    return total, per_example


def check_equivalence(runner: DecoderRunner, batch: Batch, *, tolerance: float = 1e-4) -> float:
    """Compare the split forward with the model's own forward on ``batch`` (eval mode).

    Returns the largest absolute logit difference relative to the logits' scale; raises
    :class:`ModelError` above ``tolerance``.
    """
    model = runner.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours = runner.answer_logits(
                runner.run_layers(runner.embed(batch.input_ids), 0, runner.n_layers), batch
            )
            mask = torch.zeros_like(batch.input_ids)
            for r, n in enumerate(batch.lengths):
                mask[r, :n] = 1
            ref = model(input_ids=batch.input_ids, attention_mask=mask).logits
            ref = ref[batch.rows, batch.cols].float()
    finally:
        model.train(was_training)
    scale = float(ref.abs().max()) + 1.0
    diff = float((ours - ref).abs().max()) / scale
    if not diff <= tolerance:
        raise ModelError(
            f"{type(model).__name__}: the layer-by-layer forward differs from the model's own "
            f"forward (relative logit difference {diff:.2e}); this architecture is not supported "
            "by feddx's trainer"
        )
    return diff
