"""Helpers for the registry tests (also used by tests/cli/test_registry_cli.py): real adapter
folders saved from tiny random Llamas, and the ways a registered adapter gets damaged."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from feddx.model.adapter import WEIGHTS_FILE, adapter_state, load_adapter_state, save_adapter
from feddx.personalize.registry import AdapterEntry

BASE = "tiny-llama:test"
"""The base-model fingerprint the test adapters are saved for."""


def save_tiny_adapter(
    make_model: Callable[..., Any],
    directory: Path,
    *,
    seed: int = 0,
    base: str = BASE,
    rank: int = 4,
    temperature: float = 1.0,
) -> Path:
    """A real adapter folder: LoRA rank ``rank`` on the top layer of a 2-layer tiny Llama,
    random weights from ``seed``, prompt budget 64, saved for the base model ``base``."""
    model = make_model(layers=2, top_layers=1, seed=seed, rank=rank, alpha=8.0)
    g = torch.Generator().manual_seed(seed)
    load_adapter_state(
        model, {k: torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}
    )
    info = save_adapter(
        model, directory, base_fingerprint=base, max_prompt_tokens=64, temperature=temperature
    )
    return info.directory


def age_files(entry: AdapterEntry, seconds: float = 60.0) -> None:
    """Set the adapter's file times into the past, as if registered a minute ago (a cached
    verification is only trusted for files older than the registry's racy window)."""
    past = time.time() - seconds
    for f in entry.path.iterdir():
        os.utime(f, (past, past))


def flip_byte(entry: AdapterEntry) -> None:
    """Invert one byte in the middle of the weights (same size: only the hash can tell)."""
    path = entry.path / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(entry: AdapterEntry) -> None:
    """Cut the weights file to half its size (an interrupted copy)."""
    path = entry.path / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove_file(entry: AdapterEntry) -> None:
    (entry.path / "adapter_config.json").unlink()


DAMAGE: dict[str, tuple[Callable[[AdapterEntry], None], str]] = {
    "flipped byte": (flip_byte, "corrupt (content hash mismatch"),
    "truncated": (truncate, "truncated (adapter_model.safetensors has "),
    "deleted file": (remove_file, "missing (adapter_config.json is gone)"),
}
"""How a registered adapter gets damaged, and how the registry must name the damage."""
