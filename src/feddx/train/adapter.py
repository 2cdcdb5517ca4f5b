"""Attach, extract, load and save LoRA adapters.

The adapter is the only thing that moves between a trainer, a federated server and the
service, so its on-disk form is small and checkable:

- ``adapter_model.safetensors``: the LoRA tensors under peft's key names, so
  ``peft.PeftModel.from_pretrained`` can also read the directory;
- ``adapter_config.json``: peft's own config;
- ``feddx_adapter.json``: the base-model fingerprint the adapter was trained for, the
  :class:`~feddx.train.config.LoraSpec`, the SHA-256 of the tensor file and the caller's metadata.

A directory is written next to its final place and renamed into it, so readers see either the
old adapter or the new one, never half of each. Loading checks the fingerprint (an adapter for
another base model would load without error and produce garbage) and the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from feddx.errors import ModelError
from feddx.train.config import LoraSpec

WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
META_FILE = "feddx_adapter.json"
_FORMAT = 1
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def decoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of decoder layers of a causal LM (peft-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "model", None)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise ModelError(
            f"{type(base).__name__} has no .model.layers: feddx trains decoder-only causal LMs "
            "with a Llama-style layout (Llama, Mistral, Qwen2, SmolLM, Phi-3, ...)"
        )
    return layers


def attach_lora(model: Any, spec: LoraSpec) -> Any:
    """Wrap ``model`` with fresh LoRA adapters as ``spec`` says; returns the peft model.

    Base weights are frozen; only the adapters train. The adapters' initial values come from
    torch's global RNG (seed it first for reproducible runs). Raises :class:`ModelError` when a
    target module does not exist or ``top_layers`` exceeds the model's depth.
    """
    from peft import LoraConfig, get_peft_model

    spec.validate()
    if hasattr(model, "peft_config"):
        raise ModelError("the model already has LoRA adapters attached")
    n_layers = len(decoder_layers(model))
    layers: list[int] | None = None
    if spec.top_layers is not None:
        if spec.top_layers > n_layers:
            raise ModelError(
                f"lora.top_layers={spec.top_layers} but the model has {n_layers} layers"
            )
        layers = list(range(n_layers - spec.top_layers, n_layers))
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
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
        raise ModelError(
            f"cannot attach LoRA to {', '.join(spec.target_modules)}: {first}"
        ) from None
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
    indices = [int(m.group(1)) for k in lora_parameters(model) if (m := _LAYER_RE.search(k))]
    return min(indices) if indices else 0


def adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the LoRA tensors (CPU, float32, sorted keys): what federated clients send."""
    return {
        k: p.detach().to(device="cpu", dtype=torch.float32).clone()
        for k, p in lora_parameters(model).items()
    }


def load_adapter_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's LoRA parameters in place.

    Raises :class:`ModelError` when keys differ (naming a few) or a shape does not match.
    """
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
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key].to(device=param.device, dtype=param.dtype))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final``, discarding an older ``final``.

    Both renames are atomic; between them ``final`` is briefly absent, never half-written.
    """
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}-{time.time_ns()}")
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def save_adapter(
    model: Any, directory: Path, *, base_fingerprint: str, metadata: dict[str, Any]
) -> None:
    """Save the active LoRA adapter atomically to ``directory`` (see the module docstring).

    ``metadata`` must be JSON-serialisable; it comes back from :func:`load_adapter`.
    """
    from safetensors.torch import save_file

    try:
        meta_json = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as e:
        raise ModelError(f"adapter metadata is not JSON-serialisable: {e}") from None
    spec = lora_spec_of(model)
    state = adapter_state(model)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
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
            "lora": {**spec.__dict__, "target_modules": list(spec.target_modules)},
            "weights_sha256": _sha256(tmp / WEIGHTS_FILE),
            "n_parameters": int(sum(v.numel() for v in state.values())),
            "metadata": meta_json,
        }
        (tmp / META_FILE).write_text(json.dumps(info, indent=1))
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def read_adapter_info(directory: Path) -> dict[str, Any]:
    """The parsed ``feddx_adapter.json`` of an adapter directory (fingerprint, LoRA spec,
    metadata), or :class:`ModelError` if it is missing or unreadable."""
    directory = resolve_adapter_dir(directory)
    path = directory / META_FILE
    if not directory.is_dir():
        raise ModelError(f"adapter directory not found: {directory}")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory} is not a feddx adapter (no {META_FILE})") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"adapter {directory} is corrupt: cannot read {META_FILE} ({e})") from None
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise ModelError(f"adapter {directory}: unsupported or corrupt {META_FILE}")
    return info


def adapter_lora_spec(directory: Path) -> LoraSpec:
    """The :class:`LoraSpec` an adapter directory was trained with (to attach before loading)."""
    info = read_adapter_info(directory)
    try:
        return LoraSpec(**info["lora"])
    except (KeyError, TypeError) as e:
        raise ModelError(f"adapter {directory}: corrupt LoRA spec in {META_FILE} ({e})") from None


def load_adapter(model: Any, directory: Path, *, base_fingerprint: str) -> dict[str, Any]:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (already LoRA-attached with
    the same spec, see :func:`adapter_lora_spec`); returns its metadata.

    Raises :class:`ModelError` if the adapter was trained for another base model, if its files
    are missing or corrupt (checksum), or if its tensors do not fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = resolve_adapter_dir(directory)
    info = read_adapter_info(directory)
    trained_for = info.get("base_fingerprint")
    if trained_for != base_fingerprint:
        raise ModelError(
            f"adapter {directory} was trained for base model {trained_for!r}, "
            f"not the loaded {base_fingerprint!r}"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"adapter {directory} is incomplete: {WEIGHTS_FILE} is missing")
    if _sha256(weights) != info.get("weights_sha256"):
        raise ModelError(f"adapter {directory} is corrupt: {WEIGHTS_FILE} fails its checksum")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"adapter {directory} is corrupt: {e}") from None
    load_adapter_state(model, state)
    metadata = info.get("metadata", {})
    return metadata if isinstance(metadata, dict) else {}
