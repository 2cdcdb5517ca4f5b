"""Run a causal LM's decoder one range of layers at a time.

Hugging Face's ``model(input_ids)`` runs every layer and then the LM head over the whole
vocabulary at every position. Split into ``embeddings -> layers[a:b] -> norm -> head``, the same
forward lets callers do less: the trainer caches the output of the frozen bottom layers and
starts later epochs at layer ``a``, and computes the head only at answer positions
(:mod:`feddx.train.forward`); an ensemble runs the frozen layers below its adapters once for
all members (:mod:`feddx.model.ensemble`). Training and inference share this one runner.

This relies on the Llama-style layout (``model.embed_tokens``, ``model.layers``,
``model.norm``, ``model.rotary_emb``, ``lm_head``) shared by Llama, Mistral, Qwen2, SmolLM and
others; :func:`feddx.train.forward.check_equivalence` compares the split forward with the
model's own forward once per run, so an architecture that differs in some detail is refused
instead of trained wrongly.
"""

from __future__ import annotations

from typing import Any

import torch

from feddx.errors import ModelError


class DecoderRunner:
    """The pieces of a (peft-wrapped) causal LM, callable one range of layers at a time.

    Raises :class:`ModelError` for a model without the Llama-style layout.
    """

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
                f"{type(base).__name__} lacks {what}: feddx's split forward needs a Llama-style "
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
        self.config = base.config

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, H]`` (the input of layer 0)."""
        return self.embed_tokens(input_ids)

    def rotary(self, hidden: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Position ids ``0..L-1`` and the rotary tables for them."""
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        return positions, self.rotary_emb(hidden, positions)

    def run_layers(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        *,
        checkpoint: bool = False,
        rotary: tuple[torch.Tensor, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder layers ``start..end-1`` on right-padded hidden states ``[B, L, H]``.

        No attention mask by default: with right padding and causal attention, real positions
        never see the padding, and position ids are ``0..L-1`` in every row. Scoring passes
        its own additive ``[B, 1, L, L]`` mask and ``rotary`` (the candidate trie's tree mask
        and positions, :mod:`feddx.model.ensemble`).
        """
        positions, tables = rotary if rotary is not None else self.rotary(hidden)
        for layer in self.layers[start:end]:
            if checkpoint and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(
                    _call_layer,
                    layer,
                    hidden,
                    positions,
                    tables,
                    attention_mask,
                    use_reentrant=False,
                )
            else:
                hidden = _call_layer(layer, hidden, positions, tables, attention_mask)
        return hidden

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of last-layer states (the final norm works per position)."""
        return self.lm_head(self.norm(states)).float()


def _call_layer(
    layer: Any,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    rotary: Any,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    out = layer(
        hidden, attention_mask=attention_mask, position_ids=positions, position_embeddings=rotary
    )
    # transformers < 5 returned a tuple from decoder layers.
    return out[0] if isinstance(out, tuple) else out


__all__ = ["DecoderRunner"]
