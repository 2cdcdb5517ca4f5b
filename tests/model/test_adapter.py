"""LoRA adapters: placement, state round trips, atomic saving, and refusing the wrong model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from feddx.errors import ModelError
from feddx.model import adapter as adapter_mod
from feddx.model.adapter import (
    LoraSpec,
    adapter_lora_spec,
    adapter_state,
    attach_lora,
    first_adapted_layer,
    load_adapter,
    load_adapter_state,
    save_adapter,
)

FP = "tiny-llama:abc123"


def _randomize(model: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}
    load_adapter_state(model, state)
    return state


def test_top_layers_puts_adapters_only_on_the_last_layers(make_model: Callable[..., Any]) -> None:
    model = make_model(layers=3, top_layers=1, target_modules=("q_proj", "v_proj", "down_proj"))
    keys = list(adapter_state(model))
    assert keys == sorted(keys)
    assert all(".layers.2." in k for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "v_proj", "down_proj"}
    assert first_adapted_layer(model) == 2
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_state_is_cpu_float32_copies(make_model: Callable[..., Any]) -> None:
    model = make_model()
    state = adapter_state(model)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    next(iter(state.values())).add_(1.0)  # a copy: changing it leaves the model alone
    assert not torch.equal(next(iter(state.values())), next(iter(adapter_state(model).values())))


def test_load_state_round_trip_and_mismatches(make_model: Callable[..., Any]) -> None:
    model = make_model()
    state = _randomize(model)
    other = make_model(seed=5)
    load_adapter_state(other, state)
    for k, v in adapter_state(other).items():
        assert torch.equal(v, state[k])
    with pytest.raises(ModelError, match="missing"):
        load_adapter_state(other, dict(list(state.items())[1:]))
    with pytest.raises(ModelError, match="unexpected"):
        load_adapter_state(other, {**state, "base_model.extra.lora_A.weight": torch.zeros(1)})
    key = next(iter(state))
    with pytest.raises(ModelError, match="shape"):
        load_adapter_state(other, {**state, key: torch.zeros(3, 3)})
    with pytest.raises(ModelError, match="NaN"):
        load_adapter_state(other, {**state, key: torch.full_like(state[key], float("nan"))})


def test_save_and_load_round_trip(make_model: Callable[..., Any], tmp_path: Path) -> None:
    model = make_model(top_layers=2, rank=4)
    state = _randomize(model)
    save_adapter(
        model, tmp_path / "a", base_fingerprint=FP, max_prompt_tokens=64, metadata={"round": 3}
    )
    # The adapter records the modules "auto" resolved to (Llama: q_proj and v_proj).
    expected = LoraSpec(rank=4, top_layers=2, target_modules=("q_proj", "v_proj"))
    assert adapter_lora_spec(tmp_path / "a") == expected
    fresh = attach_lora_like(make_model, tmp_path / "a")
    assert load_adapter(fresh, tmp_path / "a", base_fingerprint=FP).metadata == {"round": 3}
    for k, v in adapter_state(fresh).items():
        assert torch.equal(v, state[k])
    # The directory is also a plain peft adapter.
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 4


def attach_lora_like(make_model: Callable[..., Any], directory: Path) -> Any:
    spec = adapter_lora_spec(directory)
    return make_model(top_layers=spec.top_layers, rank=spec.rank, seed=9)


def test_adapter_for_another_base_model_is_refused(
    make_model: Callable[..., Any], tmp_path: Path
) -> None:
    model = make_model()
    save_adapter(model, tmp_path / "a", base_fingerprint=FP, max_prompt_tokens=64, metadata={})
    with pytest.raises(ModelError, match="trained for base model 'tiny-llama:abc123'"):
        load_adapter(model, tmp_path / "a", base_fingerprint="smollm2:other")


def test_corrupt_or_missing_adapter_is_one_clear_error(
    make_model: Callable[..., Any], tmp_path: Path
) -> None:
    model = make_model()
    save_adapter(model, tmp_path / "a", base_fingerprint=FP, max_prompt_tokens=64, metadata={})
    weights = tmp_path / "a" / adapter_mod.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        load_adapter(model, tmp_path / "a", base_fingerprint=FP)
    with pytest.raises(ModelError, match="not a feddx adapter"):
        load_adapter(model, tmp_path, base_fingerprint=FP)
    with pytest.raises(ModelError, match="not found"):
        load_adapter(model, tmp_path / "nope", base_fingerprint=FP)


def test_a_failed_save_leaves_the_previous_adapter_intact(
    make_model: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model()
    state = _randomize(model)
    save_adapter(
        model, tmp_path / "a", base_fingerprint=FP, max_prompt_tokens=64, metadata={"v": 1}
    )
    _randomize(model, seed=2)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(adapter_mod, "file_sha256", crash)
    with pytest.raises(OSError):
        save_adapter(
            model, tmp_path / "a", base_fingerprint=FP, max_prompt_tokens=64, metadata={"v": 2}
        )
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp leftovers
    assert load_adapter(model, tmp_path / "a", base_fingerprint=FP).metadata == {"v": 1}
    for k, v in adapter_state(model).items():
        assert torch.equal(v, state[k])


def test_attach_errors(make_model: Callable[..., Any], tokenizer: Any) -> None:
    from tiny_llama import make_tiny_llama

    with pytest.raises(ModelError, match="already has LoRA"):
        attach_lora(make_model(), LoraSpec())
    with pytest.raises(ModelError, match="top_layers=9"):
        attach_lora(make_tiny_llama(len(tokenizer)), LoraSpec(top_layers=9))
    with pytest.raises(ModelError, match="cannot attach LoRA to nonexistent"):
        attach_lora(make_tiny_llama(len(tokenizer)), LoraSpec(target_modules=("nonexistent",)))
    with pytest.raises(ModelError, match="no LoRA"):
        adapter_state(make_tiny_llama(len(tokenizer)))
