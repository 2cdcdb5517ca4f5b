"""The one training recipe: resolve and load a base model on some hardware, attach LoRA, train,
save the adapter with everything needed to use it as it was trained.

:func:`train_and_save` is the whole recipe, a short function built from the builders below;
``feddx train`` calls it. Callers that keep one model loaded across many trainings (the demo,
``feddx personalize``, the Flower ClientApp, ``feddx federate experiments``' centralized
baseline) call the same builders themselves:

- :func:`load_model` / :func:`load_diagnoser`: the base model on a device, in a dtype,
  optionally quantized (:mod:`feddx.model.hardware`), with a seeded fresh LoRA layout;
- :func:`attach_adapter`: LoRA on a loaded model (k-bit preparation first for a 4/8-bit base);
- :func:`fit`: :func:`~feddx.train.trainer.train_adapter` with the hardware's defaults
  (gradient checkpointing on a GPU, off on a CPU, unless the config says);
- :func:`save_trained_adapter`: :func:`~feddx.model.adapter.save_adapter` with the metadata every
  adapter carries (:func:`adapter_record`): base architecture, target modules, candidates and
  their ICD-10 codes, prompt budget, the dtype, device and quantization it was trained on, and
  the caller's own record (data spec, split, seed...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case
from feddx.model.adapter import AdapterInfo, LoraSpec, attach_lora, lora_spec_of, save_adapter
from feddx.model.hardware import Hardware, HardwareSpec, resolve_hardware
from feddx.model.loading import DEFAULT_MODEL, LoadedModel, load_base_model
from feddx.train.config import TrainConfig
from feddx.train.trainer import TrainProgress, TrainResult, train_adapter

if TYPE_CHECKING:
    from feddx.model.predict import Diagnoser


# ----------------------------------------------------------------------------- builders
def load_model(
    model: str = DEFAULT_MODEL, hardware: HardwareSpec | Hardware | None = None
) -> LoadedModel:
    """Resolve ``model`` (alias, ``.gguf`` file, directory or hub id) and load it on
    ``hardware`` (a spec is resolved first; ``None``: all ``auto``).

    Raises :class:`~feddx.errors.ConfigError` for hardware this machine lacks and
    :class:`~feddx.errors.ModelError` for a model that cannot be resolved or loaded, each in one
    line, before anything heavy when the hardware is at fault.
    """
    if not isinstance(hardware, Hardware):
        hardware = resolve_hardware(hardware)
    loaded = load_base_model(model, hardware)
    if hardware.quantize != "none":
        # QLoRA's k-bit preparation: norms in float32 and input gradients on, so LoRA layers
        # above a frozen quantized trunk get gradients. Our trainer checkpoints layers itself.
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    return loaded


def attach_adapter(model: Any, lora: LoraSpec, *, seed: int) -> Any:
    """A fresh LoRA adapter of layout ``lora`` on ``model`` (the peft model), initialised from
    ``seed`` so equal seeds give equal initial adapters (and equal runs)."""
    import torch

    torch.manual_seed(seed)
    return attach_lora(model, lora)


def load_diagnoser(
    model: str | LoadedModel = DEFAULT_MODEL,
    hardware: HardwareSpec | Hardware | None = None,
    *,
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> Diagnoser:
    """A :class:`~feddx.model.predict.Diagnoser` over ``model`` (loaded by :func:`load_model`
    unless already loaded), with a fresh LoRA layout ``lora`` attached from ``seed`` (none when
    ``lora`` is ``None``): the one model a caller scores and trains on in place across many
    trainings."""
    import torch

    from feddx.model.predict import Diagnoser

    loaded = model if isinstance(model, LoadedModel) else load_model(model, hardware)
    diagnoser = Diagnoser.from_loaded(loaded)
    if lora is not None:
        torch.manual_seed(seed)
        diagnoser.attach(lora)
    return diagnoser


def training_config_for(model: Any, config: TrainConfig) -> TrainConfig:
    """``config`` with its open choices made for the device ``model`` sits on: gradient
    checkpointing (``None``) on a GPU, off on a CPU and under DP (see
    :mod:`feddx.model.hardware`)."""
    if config.gradient_checkpointing is not None:
        return config
    on_gpu = _first_base_parameter(model).device.type != "cpu"
    return config.replace(gradient_checkpointing=on_gpu and config.dp is None)


def fit(
    model: Any,
    tokenizer: Any,
    cases: Sequence[Case],
    config: TrainConfig,
    **train_options: Any,
) -> TrainResult:
    """Train the LoRA adapter attached to ``model`` on ``cases``: :func:`train_adapter` (whose
    keyword options ``train_options`` are) with :func:`training_config_for`'s defaults."""
    return train_adapter(
        model, tokenizer, cases, training_config_for(model, config), **train_options
    )


def _first_base_parameter(model: Any) -> Any:
    """The first floating-point base weight (not LoRA): where the base runs (a 4-bit base's
    packed weights are integers, so they are skipped)."""
    for name, param in model.named_parameters():
        if "lora_" not in name and param.is_floating_point():
            return param
    return next(model.parameters())


def trained_on(model: Any) -> dict[str, str]:
    """The device, dtype and quantization ``model``'s base runs in, read from the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    param = _first_base_parameter(base)
    # the dtype it was loaded in (a quantized base's compute dtype; k-bit preparation moves its
    # norms and embeddings to float32), else that of its weights
    dtype = getattr(base.config, "dtype", None) or param.dtype
    q = getattr(base.config, "quantization_config", None)
    q = q if isinstance(q, Mapping) else vars(q) if q is not None else {}
    quantize = "4bit" if q.get("load_in_4bit") else "8bit" if q.get("load_in_8bit") else "none"
    return {
        "device": str(param.device),
        "dtype": str(dtype).removeprefix("torch."),
        "quantize": quantize,
    }


def adapter_record(
    model: Any,
    max_prompt_tokens: int,
    candidates: CandidateList | Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata saved with every adapter: the caller's ``metadata`` (data spec, split...)
    plus what the adapter depends on, read from the model, and the prompt budget it was
    trained with."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    record: dict[str, Any] = dict(metadata or {})
    record.update(
        architecture=str(getattr(base.config, "model_type", type(base).__name__)),
        target_modules=list(lora_spec_of(model).target_modules),
        max_prompt_tokens=max_prompt_tokens,
        trained_on=trained_on(model),
    )
    if candidates is not None:
        names = candidates.names if isinstance(candidates, CandidateList) else list(candidates)
        record["candidates"] = list(names)
        if isinstance(candidates, CandidateList):
            record["icd10"] = {n: candidates.icd10[n] for n in names if n in candidates.icd10}
    return record


def save_trained_adapter(
    model: Any,
    directory: Path,
    *,
    base_fingerprint: str,
    max_prompt_tokens: int,
    candidates: CandidateList | Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    temperature_source: str | None = None,
) -> AdapterInfo:
    """Save ``model``'s active adapter to ``directory`` (atomically) with
    :func:`adapter_record`'s metadata; returns what a reader will see."""
    return save_adapter(
        model,
        directory,
        base_fingerprint=base_fingerprint,
        max_prompt_tokens=max_prompt_tokens,
        temperature=temperature,
        temperature_source=temperature_source,
        metadata=adapter_record(model, max_prompt_tokens, candidates, metadata),
    )


# ----------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class RecipeResult:
    """What :func:`train_and_save` did: the loaded base, the training result, the adapter."""

    loaded: LoadedModel
    result: TrainResult
    adapter: AdapterInfo


def train_and_save(
    model: str,
    cases: Sequence[Case],
    config: TrainConfig,
    out_dir: Path,
    *,
    hardware: Hardware | None = None,
    candidates: CandidateList | None = None,
    metadata: Mapping[str, Any] | None = None,
    resume: bool = True,
    progress: TrainProgress | None = None,
    feature_cache_dir: Path | None = None,
) -> RecipeResult:
    """Fine-tune a LoRA adapter of ``model`` on ``cases`` and save it to ``out_dir/adapter``
    (checkpoints in ``out_dir/checkpoints``; resumed unless ``resume`` is false).

    ``hardware`` says where the base runs (default: ``config.hardware`` resolved);
    ``candidates`` is the list the adapter will
    be scored against (needed by ``answer_loss: candidates``, recorded in any case);
    ``metadata`` is the caller's record (data spec, split, seed). Raises the one-line
    :class:`~feddx.errors.FeddxError` of whichever step fails.
    """
    loaded = load_model(model, hardware or config.hardware)
    net = attach_adapter(loaded.model, config.lora, seed=config.seed)
    result = fit(
        net,
        loaded.tokenizer,
        cases,
        config,
        out_dir=out_dir,
        resume=resume,
        progress=progress,
        feature_cache_dir=feature_cache_dir,
        candidates=candidates.names if candidates is not None else None,
    )
    net.eval()
    info = save_trained_adapter(
        net,
        out_dir / "adapter",
        base_fingerprint=loaded.fingerprint,
        max_prompt_tokens=config.max_prompt_tokens,
        candidates=candidates,
        metadata={"model": loaded.source.name, **(metadata or {})},
    )
    return RecipeResult(loaded, result, info)


__all__ = [
    "RecipeResult",
    "adapter_record",
    "attach_adapter",
    "fit",
    "load_diagnoser",
    "load_model",
    "save_trained_adapter",
    "train_and_save",
    "trained_on",
    "training_config_for",
]
