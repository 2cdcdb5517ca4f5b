"""Fixtures of synthetic cases for the evaluation tests (see evaluate_fixtures.py)."""

from __future__ import annotations

import pytest
from evaluate_fixtures import make_cases  # type: ignore[import-not-found]

from feddx.data.schema import Case


@pytest.fixture()
def train_cases() -> list[Case]:
    return make_cases(24)


@pytest.fixture()
def test_cases() -> list[Case]:
    return make_cases(12, offset=100)
