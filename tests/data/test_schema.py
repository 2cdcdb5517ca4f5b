"""The case schema validates at the edge and orders differentials once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from feddx.data.report import describe_error
from feddx.data.schema import Case, DifferentialEntry, Label, age_band


def test_differential_is_sorted_by_probability() -> None:
    label = Label(
        diagnosis="A",
        differential=(
            DifferentialEntry(name="B", probability=0.2),
            DifferentialEntry(name="A", probability=0.7),
        ),
    )
    assert [d.name for d in label.differential] == ["A", "B"]


def test_invalid_case_error_names_field_without_echoing_input() -> None:
    with pytest.raises(ValidationError) as err:
        Case(case_id="x", age=-3, text="Maria da Silva has chest pain")  # type: ignore[arg-type]
    msg = describe_error(err.value)
    assert "age" in msg and "Maria" not in msg


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Case(case_id="x", diagnosis="flu")  # type: ignore[call-arg]


def test_require_label() -> None:
    with pytest.raises(ValueError, match="has no label"):
        Case(case_id="x").require_label()


@pytest.mark.parametrize(
    ("age", "band"), [(None, "unknown"), (5, "0-17"), (39, "18-39"), (80, "75+")]
)
def test_age_band(age: float | None, band: str) -> None:
    assert age_band(age) == band
