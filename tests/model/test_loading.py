"""Base-model resolution, the dequantized cache, and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddx.errors import ModelError
from feddx.model import loading
from feddx.model.loading import (
    DEFAULT_MODEL,
    MANIFEST,
    list_cached_models,
    load_base_model,
    resolve_model,
)


def test_default_alias_resolves_to_packaged_gguf() -> None:
    src = resolve_model(DEFAULT_MODEL)
    assert src.kind == "gguf"
    assert src.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(src.location).is_file()


def test_alias_is_case_insensitive() -> None:
    assert resolve_model("SmolLM2-135M-Instruct").kind == "gguf"


@pytest.mark.parametrize("bad", ["no-such-model", "a b/c", "too/many/slashes"])
def test_unknown_model_id_is_one_clear_error(bad: str) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model(bad)


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_hub_id_respects_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as err:
        load_base_model("example-org/not-cached-model")
    assert "\n" not in str(err.value)
    assert "local directory" in str(err.value)


def test_corrupt_gguf_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file" * 100)
    with pytest.raises(ModelError, match="cannot read GGUF file"):
        load_base_model(str(bad))
    # A failed build leaves no half-written cache behind.
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not any(models.iterdir())


def test_local_directory_loads(tmp_path: Path, tiny_model: object, tokenizer: object) -> None:
    tiny_model.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    loaded = load_base_model(str(tmp_path))
    assert loaded.source.kind == "directory"
    assert loaded.model.config.hidden_size == 32
    assert loaded.tokenizer.chat_template


def test_cache_validation_detects_size_mismatch(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"x" * 10)
    (d / MANIFEST).write_text(json.dumps({"format": 1, "files": {"model.safetensors": 10}}))
    assert loading._valid_cache(d)
    (d / "model.safetensors").write_bytes(b"x" * 5)  # truncated copy
    assert not loading._valid_cache(d)
    (d / MANIFEST).write_text("{not json")
    assert not loading._valid_cache(d)


@pytest.mark.smollm2
def test_smollm2_cache_round_trip_and_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path))
    first = load_base_model()
    assert not first.from_cache
    assert first.model.dtype == torch.float32
    second = load_base_model()
    assert second.from_cache
    assert second.fingerprint == first.fingerprint
    for (n1, p1), (n2, p2) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)
    [cached] = list_cached_models()
    assert cached.valid and cached.size_bytes > 500e6

    tok = second.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = second.model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text

    # Corrupt the cached weights (same size, garbage content): the next load rebuilds.
    weights = cached.directory / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"\0" * size)
    third = load_base_model()
    assert not third.from_cache
    assert load_base_model().from_cache
