"""LoRA adapters: their spec, and attaching, extracting, validating, saving and loading them.

The adapter is the only thing that moves between a trainer, a federated server, the registry
and the service, so its on-disk form is small and checkable:

- ``adapter_model.safetensors``: the LoRA tensors under peft's key names, so
  ``peft.PeftModel.from_pretrained`` can also read the directory;
- ``adapter_config.json``: peft's own config;
- ``feddx_adapter.json`` (:class:`AdapterInfo`): what a reader needs to use the tensors as
  they were trained: the base-model fingerprint, the :class:`LoraSpec`, the prompt budget, the
  fitted temperature, the SHA-256 of the tensor file, and the writer's free-form metadata.

Binding the budget and temperature to the tensors is deliberate: an adapter scored with
another prompt budget than it was trained with sees differently truncated prompts, and one
served at another temperature reports miscalibrated probabilities. Every writer records them
(:func:`save_adapter` requires the budget) and every reader takes them from here.

A directory is written next to its final place and renamed into it (:mod:`feddx.io`), so
readers see either the old adapter or the new one, never half of each. Loading checks the
fingerprint (an adapter for another base model would load without error and produce garbage)
and the checksum.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from feddx.errors import ConfigError, ModelError
from feddx.io import atomic_write_json, building_dir, file_sha256
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS
from feddx.settings import Names, Settings

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
META_FILE = "feddx_adapter.json"
# Format 2 records the prompt budget and temperature at the top level; format 1 adapters
# (budget, when recorded at all, inside the free-form metadata) are still read.
_FORMAT = 2
_READABLE_FORMATS = (1, 2)

AUTO_TARGETS = "auto"
ALL_LINEAR = "all-linear"

AdapterState = dict[str, torch.Tensor]
"""LoRA tensors by peft's saved key names (CPU, float32): what moves between parties."""


class LoraSpec(Settings):
    """Where LoRA adapters go and how big they are.

    Parameters
    ----------
    rank, alpha, dropout
        LoRA rank ``r``, scaling numerator ``alpha`` (the update is scaled by ``alpha / r``) and
        the dropout applied to the adapter input during training.
    target_modules
        Names of the linear layers that get adapters (``q_proj``, ``v_proj``, ``o_proj``,
        ``gate_proj`` ...), or one of two words resolved per model by
        :func:`resolve_target_modules`: ``auto`` (the default: the family's usual attention
        projections, ``q_proj``/``v_proj`` for Llama-likes, ``c_attn`` for GPT-2,
        ``query_key_value`` for Bloom ...) and ``all-linear`` (every linear layer of the
        decoder blocks). An adapter records the names it was attached to.
    top_layers
        ``None``: every decoder layer gets adapters. ``N``: only the last ``N`` layers do; the
        frozen layers below run once per example and their output is cached (the main speed
        lever of :func:`feddx.train.trainer.train_adapter`).
    """

    settings_name: ClassVar[str] = "lora"

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: Names = (AUTO_TARGETS,)
    top_layers: int | None = Field(default=None, ge=1)

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, modules: tuple[str, ...]) -> tuple[str, ...]:
        if not modules or not all(modules):
            raise ValueError("must be a non-empty list of module names")
        words = [m for m in modules if m in (AUTO_TARGETS, ALL_LINEAR)]
        if words and len(modules) > 1:
            raise ValueError(f"{words[0]!r} stands alone, not in a list of module names")
        return modules

    def resolved(self, model: Any) -> LoraSpec:
        """This spec with its target modules as :func:`attach_lora` would attach them to
        ``model`` (sorted, as :func:`lora_spec_of` reads them back): compare a requested
        spec with an attached one through this, since ``auto`` names no module itself."""
        targets = tuple(sorted(resolve_target_modules(model, self.target_modules)))
        return self.replace(target_modules=targets)

    def layout(self) -> tuple[Any, ...]:
        """What inference depends on: rank, alpha, targets and layers (dropout only acts in
        training, so adapters trained with different dropout still swap into one model)."""
        return (self.rank, float(self.alpha), tuple(self.target_modules), self.top_layers)


@dataclass(frozen=True)
class AdapterInfo:
    """The parsed ``feddx_adapter.json``: how to use an adapter's tensors as they were trained.

    ``max_prompt_tokens`` and ``temperature`` are what :class:`feddx.model.predict.Diagnoser`
    scores with; ``temperature_source`` says what the temperature was fitted on (``None``:
    never fitted, 1.0). ``metadata`` is the writer's own record (data spec, config, round...).
    """

    directory: Path
    base_fingerprint: str
    lora: LoraSpec
    max_prompt_tokens: int
    temperature: float
    temperature_source: str | None
    weights_sha256: str
    n_parameters: int
    metadata: dict[str, Any] = field(default_factory=dict)
    format: int = _FORMAT


def unwrap_peft(model: Any) -> Any:
    """The Hugging Face model under a peft wrapper (``model`` itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layer_list(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """The dotted name and the ``nn.ModuleList`` of a causal LM's decoder blocks (peft-wrapped
    or not): ``model.layers`` for Llama-likes, ``transformer.h`` for GPT-2, GPT-Neo and Bloom.

    Found generically as the shallowest list of ``num_hidden_layers`` modules of one class.
    Raises :class:`ModelError` when the model has none.
    """
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    n = getattr(config.get_text_config(), "num_hidden_layers", None) if config else None
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in base.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if (n is not None and len(module) != n) or len({type(m) for m in module}) > 1:
            continue
        if best is None or name.count(".") < best[0].count("."):
            best = (name, module)
    if best is None:
        raise ModelError(
            f"{type(base).__name__} has no list of decoder layers: feddx trains decoder-only "
            "causal LMs"
        )
    return best


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers of a causal LM (see :func:`decoder_layer_list`)."""
    return decoder_layer_list(model)[1]


# Families peft's table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) lacks.
_OWN_TARGETS: dict[str, tuple[str, ...]] = {
    "phi3": ("qkv_proj",),
    "gemma3": ("q_proj", "v_proj"),
}


def resolve_target_modules(model: Any, targets: Sequence[str]) -> list[str]:
    """The module names LoRA attaches to for ``targets`` on ``model``: the names themselves,
    or for ``auto`` the family's default (peft's per-model table, then ours, then
    ``q_proj``/``v_proj`` where the decoder has them), for ``all-linear`` every linear layer
    of the decoder blocks. Raises :class:`ModelError` when ``auto`` knows no default."""
    if tuple(targets) == (ALL_LINEAR,):
        return _linear_names(decoder_layers(model))
    if tuple(targets) != (AUTO_TARGETS,):
        return list(targets)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = str(unwrap_peft(model).config.get_text_config().model_type)
    found = _OWN_TARGETS.get(model_type) or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
        model_type
    )
    if not found and {"q_proj", "v_proj"} <= set(_linear_names(decoder_layers(model))):
        found = ("q_proj", "v_proj")
    if not found:
        raise ModelError(
            f"no default LoRA target modules for model type {model_type!r}: set "
            "lora.target_modules (module names, or 'all-linear')"
        )
    return list(found)


def _linear_names(layers: torch.nn.ModuleList) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in layers.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and "lora_" not in name
    }
    return sorted(names)


def attach_lora(model: Any, spec: LoraSpec) -> Any:
    """Wrap ``model`` with fresh LoRA adapters as ``spec`` says; returns the peft model.

    Target modules are resolved for the model's family (:func:`resolve_target_modules`), and
    ``top_layers`` counts the model's decoder blocks whatever their list is called. Base
    weights are frozen; only the adapters train. The adapters' initial values come from
    torch's global RNG (seed it first for reproducible runs). Raises :class:`ModelError` when a
    target module does not exist or ``top_layers`` exceeds the model's depth.
    """
    from peft import LoraConfig, get_peft_model

    if hasattr(model, "peft_config"):
        raise ModelError("the model already has LoRA adapters attached")
    list_name, layer_list = decoder_layer_list(model)
    n_layers = len(layer_list)
    layers: list[int] | None = None
    if spec.top_layers is not None:
        if spec.top_layers > n_layers:
            raise ModelError(
                f"lora.top_layers={spec.top_layers} but the model has {n_layers} layers"
            )
        layers = list(range(n_layers - spec.top_layers, n_layers))
    targets = resolve_target_modules(model, spec.target_modules)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        layers_pattern=list_name.rsplit(".", 1)[-1] if layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    was_training = bool(model.training)
    try:
        with warnings.catch_warnings():
            # peft calls a transformers property deprecated in 5.x (a FutureWarning per call).
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, config)
    except ValueError as e:
        first = (str(e).splitlines() or ["?"])[0]
        raise ModelError(f"cannot attach LoRA to {', '.join(targets)}: {first}") from None
    # peft's wrapper starts in training mode whatever the base model's mode was: keep the
    # caller's (a loaded base model is in eval mode, so dropout stays off outside training).
    peft_model.train(was_training)
    return peft_model


def lora_spec_of(model: Any) -> LoraSpec:
    """The :class:`LoraSpec` of a peft model's active adapter (for saving alongside it)."""
    config = _peft_config(model)
    layers = config.layers_to_transform
    top: int | None = None
    if layers is not None:
        layers = [layers] if isinstance(layers, int) else list(layers)
        n = len(decoder_layers(model))
        if sorted(layers) != list(range(n - len(layers), n)):
            raise ModelError(f"adapter layers {layers} are not the top layers of the model")
        top = len(layers)
    targets = config.target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    return LoraSpec(
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        dropout=float(config.lora_dropout),
        target_modules=tuple(targets),
        top_layers=top,
    )


def _peft_config(model: Any) -> Any:
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise ModelError("the model has no LoRA adapter attached (use attach_lora first)")
    return configs[model.active_adapter]


def lora_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of the active adapter, by peft's saved key names, sorted.

    peft stores ``...q_proj.lora_A.<adapter>.weight`` in the module tree and
    ``...q_proj.lora_A.weight`` in files; we use the file form everywhere.
    """
    _peft_config(model)  # raises when there is no adapter
    adapter = str(model.active_adapter)
    strip = re.compile(rf"\.{re.escape(adapter)}(?=\.)")
    out: dict[str, torch.nn.Parameter] = {}
    for name, param in model.named_parameters():
        if "lora_" in name and f".{adapter}." in name:
            out[strip.sub("", name)] = param
    if not out:
        raise ModelError("the model has no LoRA parameters (use attach_lora first)")
    return dict(sorted(out.items()))


def first_adapted_layer(model: Any) -> int:
    """The index of the lowest decoder layer holding LoRA parameters (the layers below it are
    frozen and their outputs can be cached)."""
    lora_parameters(model)  # raises when there is no adapter
    for i, layer in enumerate(decoder_layers(model)):
        if any("lora_" in name for name, _ in layer.named_parameters()):
            return i
    return 0


def adapter_state(model: Any) -> AdapterState:
    """A copy of the LoRA tensors (CPU, float32, sorted keys): what federated clients send."""
    return {
        k: p.detach().to(device="cpu", dtype=torch.float32).clone()
        for k, p in lora_parameters(model).items()
    }


def validate_state(model: Any, state: AdapterState) -> None:
    """Raise :class:`ModelError` unless ``state`` fits the model's LoRA layout: the same keys
    (naming a few that differ), the same shapes, and only finite values."""
    params = lora_parameters(model)
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelError(
            "adapter does not fit this model's LoRA layout: "
            + "; ".join(parts)
            + " (different rank, target modules or top_layers?)"
        )
    for key, param in params.items():
        value = state[key]
        if tuple(value.shape) != tuple(param.shape):
            raise ModelError(
                f"adapter tensor {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(param.shape)} (different LoRA rank or base model?)"
            )
        if not torch.isfinite(value).all():
            raise ModelError(f"adapter tensor {key} contains NaN or infinite values")


def load_adapter_state(model: Any, state: AdapterState, *, validated: bool = False) -> None:
    """Copy ``state`` into the model's LoRA parameters in place.

    Checked first with :func:`validate_state` unless the caller says it already was
    (``validated=True``: an ensemble or a service swapping states it checked when it loaded
    them, where re-checking every tensor on every swap would be pure overhead).
    """
    if not validated:
        validate_state(model, state)
    params = lora_parameters(model)
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key].to(device=param.device, dtype=param.dtype))


def save_adapter(
    model: Any,
    directory: Path,
    *,
    base_fingerprint: str,
    max_prompt_tokens: int,
    temperature: float = 1.0,
    temperature_source: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> AdapterInfo:
    """Save the active LoRA adapter atomically to ``directory`` (see the module docstring).

    ``max_prompt_tokens`` is the budget the adapter was trained with; ``temperature`` the one
    fitted for it (``temperature_source`` says on what). ``metadata`` must be
    JSON-serialisable; it comes back in :attr:`AdapterInfo.metadata`.
    """
    from safetensors.torch import save_file

    if not (isinstance(max_prompt_tokens, int) and max_prompt_tokens >= 16):
        raise ModelError(f"max_prompt_tokens must be an integer >= 16, not {max_prompt_tokens!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ModelError(f"temperature must be a positive number, not {temperature!r}")
    try:
        meta_json = json.loads(json.dumps(metadata or {}, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ModelError(f"adapter metadata is not JSON-serialisable: {e}") from None
    spec = lora_spec_of(model)
    state = adapter_state(model)
    directory = Path(directory)
    with building_dir(directory) as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "pt"},
        )
        peft_config = _peft_config(model).to_dict()
        (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(peft_config, indent=1, default=_jsonable))
        info = {
            "format": _FORMAT,
            "base_fingerprint": base_fingerprint,
            "lora": spec.to_dict(),
            "max_prompt_tokens": max_prompt_tokens,
            "temperature": float(temperature),
            "temperature_source": temperature_source,
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            "n_parameters": int(sum(v.numel() for v in state.values())),
            "metadata": meta_json,
        }
        atomic_write_json(tmp / META_FILE, info)
    return read_adapter_info(directory)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)


def resolve_adapter_dir(directory: Path) -> Path:
    """``directory`` itself, or its ``adapter/`` subdirectory when ``directory`` is the output
    folder of ``feddx train`` (so ``--adapter`` accepts either)."""
    directory = Path(directory)
    if not (directory / META_FILE).is_file() and (directory / "adapter" / META_FILE).is_file():
        return directory / "adapter"
    return directory


def read_adapter_info(directory: Path) -> AdapterInfo:
    """The parsed ``feddx_adapter.json`` of an adapter directory (or of ``directory/adapter``),
    or :class:`ModelError` naming the directory if it is missing, unreadable or corrupt.

    Format-1 adapters (written before the budget was bound to the adapter) take their budget
    from ``metadata.max_prompt_tokens`` where ``feddx train`` recorded it, else the default
    (logged), and temperature 1.0.
    """
    directory = resolve_adapter_dir(directory)
    path = directory / META_FILE
    if not directory.is_dir():
        raise ModelError(f"adapter directory not found: {directory}")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory} is not a feddx adapter (no {META_FILE})") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"adapter {directory} is corrupt: cannot read {META_FILE} ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") not in _READABLE_FORMATS:
        raise ModelError(f"adapter {directory}: unsupported or corrupt {META_FILE}")
    try:
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise TypeError("metadata is not an object")
        budget = raw.get("max_prompt_tokens", metadata.get("max_prompt_tokens"))
        if budget is None:
            log.warning(
                "adapter %s records no prompt budget (written before feddx bound it to the "
                "adapter); using the default %d",
                directory,
                DEFAULT_MAX_PROMPT_TOKENS,
            )
            budget = DEFAULT_MAX_PROMPT_TOKENS
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 16:
            raise ValueError(f"max_prompt_tokens {budget!r}")
        temperature = float(raw.get("temperature", 1.0))
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature {temperature!r}")
        return AdapterInfo(
            directory=directory,
            base_fingerprint=str(raw["base_fingerprint"]),
            lora=LoraSpec(**raw["lora"]),
            max_prompt_tokens=budget,
            temperature=temperature,
            temperature_source=raw.get("temperature_source"),
            weights_sha256=str(raw["weights_sha256"]),
            n_parameters=int(raw.get("n_parameters", 0)),
            metadata=metadata,
            format=int(raw["format"]),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise ModelError(f"adapter {directory}: corrupt {META_FILE} ({e})") from None


def adapter_lora_spec(directory: Path) -> LoraSpec:
    """The :class:`LoraSpec` an adapter directory was trained with (to attach before loading)."""
    return read_adapter_info(directory).lora


def read_adapter_state(
    directory: Path, *, base_fingerprint: str | None = None
) -> tuple[AdapterState, AdapterInfo]:
    """The tensors and info of an adapter saved by :func:`save_adapter`, checked without a
    model: the fingerprint (when ``base_fingerprint`` is given), the file's presence and its
    checksum. Raises :class:`ModelError` naming the directory otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_adapter_info(directory)
    directory = info.directory
    if base_fingerprint is not None and info.base_fingerprint != base_fingerprint:
        raise ModelError(
            f"adapter {directory} was trained for base model {info.base_fingerprint!r}, "
            f"not the loaded {base_fingerprint!r}"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"adapter {directory} is incomplete: {WEIGHTS_FILE} is missing")
    if file_sha256(weights) != info.weights_sha256:
        raise ModelError(f"adapter {directory} is corrupt: {WEIGHTS_FILE} fails its checksum")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"adapter {directory} is corrupt: {e}") from None
    return state, info


def load_adapter(model: Any, directory: Path, *, base_fingerprint: str) -> AdapterInfo:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (already LoRA-attached with
    the same spec, see :func:`adapter_lora_spec`); returns its :class:`AdapterInfo`.

    Raises :class:`ModelError` if the adapter was trained for another base model, if its files
    are missing or corrupt (checksum), or if its tensors do not fit the model.
    """
    state, info = read_adapter_state(directory, base_fingerprint=base_fingerprint)
    load_adapter_state(model, state)
    return info
