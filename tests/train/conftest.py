"""Fixtures for the trainer tests (see train_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from train_fixtures import make_cases  # type: ignore[import-not-found]

from feddx.data.schema import Case


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
