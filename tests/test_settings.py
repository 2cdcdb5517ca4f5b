"""The Settings base: frozen, validated copies, files, and one error format naming origin and key."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import Field, model_validator

from feddx.errors import ConfigError, DataError, FeddxError
from feddx.settings import Names, SettingPath, Settings


class Inner(Settings):
    settings_name: ClassVar[str] = "inner"

    rank: int = Field(default=4, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    modules: Names = ("q_proj",)


class Outer(Settings):
    settings_name: ClassVar[str] = "outer"
    file_section: ClassVar[str | None] = "run"

    inner: Inner = Field(default_factory=Inner)
    optional: Inner | None = None
    epochs: int = Field(default=1, ge=1)
    rate: float = Field(default=0.5, gt=0.0, allow_inf_nan=False)
    mode: Literal["fast", "exact"] = "fast"
    out: SettingPath = Path("runs/x")
    tags: dict[str, bool | int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exact_needs_two_epochs(self) -> Outer:
        if self.mode == "exact" and self.epochs < 2:
            raise ValueError("mode 'exact' needs epochs >= 2")
        return self


class Odd(Settings):
    settings_name: ClassVar[str] = "odd"
    settings_error: ClassVar[type[FeddxError]] = DataError

    n: int = 0


def _message(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as err:
        Outer.from_mapping(data, origin="run.yaml")
    return str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"epochz": 2}, "run.yaml: unknown setting 'epochz' (did you mean 'epochs'? known: "),
        (
            {"inner": {"rnak": 2}},
            "run.yaml: unknown setting 'inner.rnak' (did you mean 'inner.rank'?",
        ),
        ({"epochs": "3"}, "run.yaml: epochs must be int, got str"),
        ({"epochs": True}, "run.yaml: epochs must be int, got bool"),
        ({"epochs": 0}, "run.yaml: epochs must be >= 1"),
        ({"rate": 0}, "run.yaml: rate must be > 0"),
        ({"rate": float("nan")}, "run.yaml: rate must be a finite number"),
        ({"inner": {"dropout": 1.0}}, "run.yaml: inner.dropout must be in [0, 1)"),
        ({"optional": {"rank": 0}}, "run.yaml: optional.rank must be >= 1"),
        ({"inner": 3}, "run.yaml: inner must be a table of settings, got int"),
        ({"mode": "slow"}, "run.yaml: mode must be one of fast, exact"),
        ({"mode": "exact"}, "run.yaml: mode 'exact' needs epochs >= 2"),
        ({"tags": {"a": [1]}}, "run.yaml: tags.a must be bool/int/str, got list"),
        ({"inner": {"modules": [1]}}, "run.yaml: inner.modules.0 must be str, got int"),
    ],
)
def test_errors_name_the_origin_and_the_dotted_key(data: dict[str, object], message: str) -> None:
    assert _message(data).startswith(message)


def test_every_error_is_reported_and_no_value_is_echoed() -> None:
    text = _message({"epochs": 0, "inner": {"rank": "secret-value"}})
    # In the order the fields are declared.
    assert text == "run.yaml: inner.rank must be int, got str; epochs must be >= 1"


def test_construction_in_code_fails_the_same_way_under_the_models_name() -> None:
    with pytest.raises(ConfigError, match=r"^outer: epochs must be >= 1$"):
        Outer(epochs=0)
    with pytest.raises(ConfigError, match=r"^inner: rank must be >= 1$"):
        Inner(rank=0)
    with pytest.raises(DataError, match=r"^odd: n must be int, got str$"):
        Odd(n="x")  # type: ignore[arg-type]


def test_settings_are_frozen_hashable_values_and_replace_revalidates() -> None:
    a = Outer(inner=Inner(rank=8), epochs=2)
    assert a == Outer(inner=Inner(rank=8), epochs=2) and hash(a.inner) == hash(Inner(rank=8))
    with pytest.raises(Exception, match="frozen"):
        a.epochs = 3  # type: ignore[misc]
    b = a.replace(epochs=5)
    assert (b.epochs, a.epochs, b.inner) == (5, 2, a.inner)
    with pytest.raises(ConfigError, match="outer: epochs must be >= 1"):
        a.replace(epochs=0)
    with pytest.raises(ConfigError, match="unknown setting 'epochz'"):
        a.replace(epochz=1)


def test_names_accept_a_list_or_one_string_and_paths_a_string() -> None:
    assert Inner.from_mapping({"modules": ["q_proj", "v_proj"]}).modules == ("q_proj", "v_proj")
    assert Inner.from_mapping({"modules": "o_proj"}).modules == ("o_proj",)
    assert Outer.from_mapping({"out": "runs/y"}).out == Path("runs/y")


def test_to_dict_is_plain_data_that_loads_back_equal() -> None:
    c = Outer(inner=Inner(modules=("a", "b")), optional=Inner(rank=2), out=Path("o"))
    data = c.to_dict()
    assert data["inner"] == {"rank": 4, "dropout": 0.1, "modules": ["a", "b"]}
    assert data["out"] == "o" and data["optional"]["rank"] == 2
    assert Outer.from_mapping(data) == c


def test_files_in_three_formats_and_an_optional_section(tmp_path: Path) -> None:
    texts = {
        "a.yaml": "epochs: 3\ninner:\n  modules: [k_proj]\n",
        "b.json": '{"epochs": 3, "inner": {"modules": ["k_proj"]}}',
        "c.toml": "[run]\nepochs = 3\n[run.inner]\nmodules = ['k_proj']\n",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
        c = Outer.from_file(tmp_path / name)
        assert (c.epochs, c.inner.modules) == (3, ("k_proj",)), name
    (tmp_path / "bad.toml").write_text("epochs = 0\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: epochs must be >= 1"):
        Outer.from_file(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="expected a table of settings, got list"):
        Outer.from_mapping([1, 2])  # type: ignore[arg-type]
