"""Fixtures for the federated tests: a tiny Llama saved as a model directory, a small labeled
dataset with a canary string in every free-text field, and a config that runs a federation
of two clients in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fed_helpers import make_cases

from feddx.data.jsonl import write_jsonl
from feddx.federated.config import FederatedConfig
from tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a Hugging Face model folder."""
    d = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_llama(len(tokenizer))
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fed-data") / "cases.jsonl"
    write_jsonl(make_cases(24), path)
    return path


@pytest.fixture()
def fed_config(tiny_model_dir: Path, tiny_data: Path, tmp_path: Path) -> FederatedConfig:
    """Two IID clients, two rounds, adapters on the top layer, all outputs under tmp_path."""
    return FederatedConfig(
        model=str(tiny_model_dir),
        data=f"jsonl:{tiny_data}",
        validation_fraction=0.25,
        num_clients=2,
        partition="iid",
        num_rounds=2,
        eval_every=2,
        max_eval_cases=4,
        min_train_clients=2,
        min_available_clients=2,
        local_epochs=1,
        batch_size=4,
        learning_rate=5e-3,
        max_prompt_tokens=64,
        lora_rank=4,
        lora_alpha=8.0,
        lora_top_layers=1,
        out_dir=str(tmp_path / "run"),
        activation_cache_dir=str(tmp_path / "activations"),
    )
