"""Fixtures for the trainer tests (see train_fixtures.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from train_fixtures import make_cases, make_tiny_llama  # type: ignore[import-not-found]

from feddx.data.schema import Case
from feddx.train.adapter import attach_lora
from feddx.train.config import LoraSpec


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Tiny matmuls on a shared 2-core machine: a second OpenMP thread only spins and waits
    # (measured 10x slower under load), and one thread keeps results bit-reproducible.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cases() -> list[Case]:
    return make_cases(24)


@pytest.fixture()
def make_model(tokenizer: Any) -> Callable[..., Any]:
    """``make_model(layers=3, top_layers=None, seed=0, **lora)``: a fresh tiny Llama with
    LoRA attached (adapter initialised from ``seed``)."""

    def make(layers: int = 3, top_layers: int | None = None, seed: int = 0, **lora: Any) -> Any:
        base = make_tiny_llama(len(tokenizer), layers=layers)
        torch.manual_seed(seed)
        return attach_lora(base, LoraSpec(top_layers=top_layers, **lora))

    return make
