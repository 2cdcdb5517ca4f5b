"""Run a causal LM's forward in the pieces feddx needs: two paths, one interface.

Hugging Face's ``model(input_ids)`` runs every layer and then the LM head over the whole
vocabulary at every position. Callers here do less: the trainer computes the head only at
answer positions (:mod:`feddx.train.forward`), caches the output of the frozen bottom layers
and starts later epochs above them; an ensemble runs the frozen layers below its adapters once
for all members (:mod:`feddx.model.ensemble`).

- **Split path** (:class:`DecoderRunner`): ``embeddings -> layers[a:b] -> norm -> head``, one
  range of layers at a time. It relies on the Llama-style layout (``model.embed_tokens``,
  ``model.layers``, ``model.norm``, ``model.rotary_emb``) shared by Llama, Mistral, Qwen2,
  Phi-3, SmolLM and Gemma 3 (whose rotary tables differ per layer type). It is what makes the
  frozen-trunk cache possible, so it is used wherever it reproduces the model's own forward.
- **General path** (:class:`BackboneRunner`): the model's own backbone
  (``PreTrainedModel.base_model``) run to its final hidden states, then the LM head only where
  logits are needed. Any Hugging Face causal LM works (GPT-2, GPT-Neo, Bloom, Falcon ...); no
  layer can be skipped, but the layers below the adapters hold no trainable parameter, so
  autograd records nothing there.

:func:`choose_runner` picks the split path where its layout exists and its output matches the
model's own forward on a probe (checked once per model), else the general path, and logs the
choice and the reason once. A model with neither (no LM head, no input embeddings, no list of
decoder layers) gets a one-line :class:`~feddx.errors.ModelError` naming what is missing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from feddx.errors import ModelError
from feddx.model.adapter import decoder_layers, unwrap_peft

log = logging.getLogger(__name__)

_CHOICE = "_feddx_forward_path"


class CausalLMRunner:
    """What both forward paths share: the input embeddings, the decoder layers, the LM head
    (with final-logit softcapping where the config has it) and the model's device and dtype.

    Raises :class:`ModelError` naming what is missing for a model without an LM head, input
    embeddings or a list of decoder layers.
    """

    path: ClassVar[str] = ""

    def __init__(self, model: Any) -> None:
        base = unwrap_peft(model)
        name = type(base).__name__
        head = _call_or_none(base, "get_output_embeddings")
        embeddings = _call_or_none(base, "get_input_embeddings")
        missing = [
            w for w, x in (("an LM head", head), ("input embeddings", embeddings)) if x is None
        ]
        if missing:
            raise ModelError(f"{name} lacks {' and '.join(missing)}: feddx needs a causal LM")
        self.model = model
        self.config = base.config
        self.lm_head: Any = head
        self.embed_tokens: Any = embeddings
        self.layers = decoder_layers(model)
        self.n_layers = len(self.layers)
        text_config = self.config.get_text_config()
        self.hidden_size = int(text_config.hidden_size)
        self.softcap: float | None = getattr(text_config, "final_logit_softcapping", None)
        self.norm: Any = torch.nn.Identity()

    @property
    def device(self) -> torch.device:
        return torch.device(self.embed_tokens.weight.device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of hidden states (the embeddings'; a quantized model keeps them unquantized)."""
        return self.embed_tokens.weight.dtype  # type: ignore[no-any-return]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, H]`` (the input of layer 0) on the model's device."""
        return self.embed_tokens(input_ids.to(self.device))  # type: ignore[no-any-return]

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """Float32 vocabulary logits of final-norm outputs, softcapped as the model does."""
        logits = self.lm_head(normed).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits  # type: ignore[no-any-return]

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of last-layer states (the final norm works per position)."""
        return self.head(self.norm(states))

    def final_states(
        self, hidden: torch.Tensor, start: int = 0, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """The last layer's output ``[B, L, H]`` from the input ``hidden`` of layer ``start``
        (right-padded, no attention mask: real positions never see padding on their right)."""
        raise NotImplementedError


class DecoderRunner(CausalLMRunner):
    """The split path: a Llama-style decoder callable one range of layers at a time.

    Raises :class:`ModelError` for a model without the Llama-style layout.
    """

    path = "split"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        base = unwrap_peft(model)
        backbone: Any = getattr(base, "model", None)
        parts = ("embed_tokens", "layers", "norm", "rotary_emb")
        missing = [p for p in parts if getattr(backbone, p, None) is None]
        if missing:
            raise ModelError(
                f"{type(base).__name__} lacks {', '.join(f'model.{m}' for m in missing)}: the "
                "split forward needs a Llama-style decoder"
            )
        self.embed_tokens = backbone.embed_tokens
        self.layers = backbone.layers
        self.n_layers = len(self.layers)
        self.norm = backbone.norm
        self.rotary_emb = backbone.rotary_emb
        # Gemma 3: sliding-window and global layers have their own rotary tables.
        per_type = "layer_type" in inspect.signature(self.rotary_emb.forward).parameters
        self.layer_types: list[str] | None = list(self.config.layer_types) if per_type else None
        self.window = sliding_window(self.config)

    def rotary(
        self, hidden: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Position ids (default ``0..L-1``) and the rotary tables for them (a dict by layer
        type for models whose layer types have their own tables)."""
        if positions is None:
            positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        if self.layer_types is None:
            return positions, self.rotary_emb(hidden, positions)
        return positions, {t: self.rotary_emb(hidden, positions, t) for t in set(self.layer_types)}

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
        and positions, :mod:`feddx.model.ensemble`). Raises :class:`ModelError` for sequences
        longer than a sliding window, which this path does not apply.
        """
        if self.window is not None and hidden.shape[1] > self.window:
            raise ModelError(
                f"{hidden.shape[1]} tokens exceed the {self.window}-token sliding window the "
                "split forward does not apply"
            )
        positions, tables = rotary if rotary is not None else self.rotary(hidden)
        for i in range(start, end):
            layer = self.layers[i]
            table = tables if self.layer_types is None else tables[self.layer_types[i]]
            args = (layer, hidden, positions, table, attention_mask)
            if checkpoint and torch.is_grad_enabled():
                hidden = torch_checkpoint(_call_layer, *args, use_reentrant=False)
            else:
                hidden = _call_layer(*args)
        return hidden

    def final_states(
        self, hidden: torch.Tensor, start: int = 0, *, checkpoint: bool = False
    ) -> torch.Tensor:
        return self.run_layers(hidden, start, self.n_layers, checkpoint=checkpoint)


class BackboneRunner(CausalLMRunner):
    """The general path: the model's own backbone (``base_model``) to its final, normed
    hidden states; the head runs only where the caller asks. Starts at layer 0 only."""

    path = "general"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        base = unwrap_peft(model)
        self.backbone: Any = getattr(base, "base_model", None)
        if self.backbone is None or self.backbone is base:
            raise ModelError(
                f"{type(base).__name__} has no backbone (base_model) under its LM head"
            )

    def final_states(
        self, hidden: torch.Tensor, start: int = 0, *, checkpoint: bool = False
    ) -> torch.Tensor:
        if start != 0:
            raise ValueError("the general forward path starts at the embeddings (layer 0)")
        with _checkpointed(self.layers, checkpoint and torch.is_grad_enabled()):
            out = self.backbone(inputs_embeds=hidden, use_cache=False)
        return out.last_hidden_state  # type: ignore[no-any-return]


def split_tolerance(dtype: torch.dtype) -> float:
    """The relative logit difference below which another forward counts as the model's own:
    float32 rounding for float32 models, bf16/fp16 rounding (a few ulp of 2^-8) otherwise."""
    return 1e-4 if dtype == torch.float32 else 3e-2


def sliding_window(config: Any) -> int | None:
    """The sliding-window length of a config whose layers use one (``None``: no window)."""
    config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return window if "sliding_attention" in types else None
    return window if getattr(config, "use_sliding_window", True) else None


def choose_runner(
    model: Any, probe_ids: Sequence[int], longest: int
) -> DecoderRunner | BackboneRunner:
    """The split runner where it applies to ``model`` and sequences of up to ``longest``
    tokens, else the general one; the reason is logged once per model and path.

    Applies means: the Llama-style layout exists, ``longest`` fits any sliding window, and the
    split forward reproduces the model's own logits on ``probe_ids`` (checked once per model,
    :func:`split_difference`). Raises :class:`ModelError` for a model neither path supports.
    """
    reason = _split_refusal(model, probe_ids, longest)
    runner: DecoderRunner | BackboneRunner
    runner = BackboneRunner(model) if reason else DecoderRunner(model)
    logged = unwrap_peft(model).__dict__.setdefault(_CHOICE + "_logged", set())
    if (runner.path, reason) not in logged:
        logged.add((runner.path, reason))
        name = type(unwrap_peft(model)).__name__
        if reason:
            log.info("%s: general forward path (%s)", name, reason)
        else:
            log.info("%s: split forward path (matches the model's own forward)", name)
    return runner


def _split_refusal(model: Any, probe_ids: Sequence[int], longest: int) -> str:
    """Why the split path does not apply (``""``: it does). The layout and logit check are
    remembered on the model; the length check depends on the caller's sequences."""
    base = unwrap_peft(model)
    verdict = base.__dict__.get(_CHOICE)
    if verdict is None:
        try:
            runner = DecoderRunner(model)
            diff = split_difference(runner, probe_ids)
            verdict = (
                ""
                if diff <= split_tolerance(runner.dtype)
                else (f"the split forward differs from the model's own by {diff:.1e}")
            )
        except ModelError as e:
            verdict = str(e)
        base.__dict__[_CHOICE] = verdict
    if verdict:
        return str(verdict)
    window = sliding_window(base.config)
    if window is not None and longest > window:
        return f"sequences exceed the {window}-token sliding window"
    return ""


def split_difference(runner: DecoderRunner, probe_ids: Sequence[int]) -> float:
    """The largest difference between the split forward's logits and the model's own on
    ``probe_ids`` (one sequence, eval mode, no gradients), relative to the logits' scale."""
    ids = torch.tensor([list(probe_ids)], dtype=torch.long, device=runner.device)
    model = runner.model
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ours = runner.logits(runner.run_layers(runner.embed(ids), 0, runner.n_layers))
            ref = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        for module, mode in modes.items():
            module.training = mode
    return float((ours - ref).abs().max()) / (float(ref.abs().max()) + 1.0)


@contextmanager
def _checkpointed(layers: Sequence[Any], enabled: bool) -> Iterator[None]:
    """Activation checkpointing of every layer in ``layers`` for the duration (each layer's
    forward wrapped in a non-reentrant checkpoint, then restored), independent of how the
    model's own code supports it."""
    if not enabled:
        yield
        return
    for layer in layers:
        layer.forward = partial(torch_checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _call_or_none(obj: Any, method: str) -> Any:
    try:
        return getattr(obj, method)()
    except (AttributeError, NotImplementedError):
        return None


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


__all__ = [
    "BackboneRunner",
    "CausalLMRunner",
    "DecoderRunner",
    "choose_runner",
    "sliding_window",
    "split_difference",
    "split_tolerance",
]
