"""Fixtures for the registry tests: real adapters saved from tiny random Llamas, and a real
SQLite registry under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feddx.personalize.registry import AdapterEntry, AdapterRegistry

from .registry_helpers import save_tiny_adapter


@pytest.fixture()
def make_adapter(make_model: Callable[..., Any], tmp_path: Path) -> Callable[..., Path]:
    """``make_adapter(name, seed=0, base=BASE, rank=4)``: an adapter folder under
    ``tmp_path/sources`` (see :func:`registry_helpers.save_tiny_adapter`)."""

    def make(name: str, **kwargs: Any) -> Path:
        return save_tiny_adapter(make_model, tmp_path / "sources" / name, **kwargs)

    return make


@pytest.fixture()
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "registry")


@pytest.fixture()
def hierarchy(
    registry: AdapterRegistry, make_adapter: Callable[..., Path]
) -> dict[str, AdapterEntry]:
    """global/v1 > regional/europe/v1 > institutional/cleveland/v1, all for the base BASE."""
    g = registry.register(make_adapter("g1", seed=1), level="global", training_round=4)
    r = registry.register(
        make_adapter("r1", seed=2), level="regional", region="europe", parent_id=g.adapter_id
    )
    i = registry.register(
        make_adapter("i1", seed=3),
        level="institutional",
        institution="cleveland",
        parent_id=r.adapter_id,
    )
    return {"global": g, "regional": r, "institutional": i}
