"""``--set KEY=VALUE``: one config setting overridden on the command line, the same way for
every command that reads a config (``feddx federate``, ``personalize``, ``train``)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar

import typer

from feddx.errors import ConfigError
from feddx.settings import Settings

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override one config setting: KEY=VALUE (repeatable; a dotted KEY reaches a "
        "nested one, e.g. lora.rank=16; VALUE as in TOML: 3, 0.5, true, 'text').",
    ),
]

S = TypeVar("S", bound=Settings)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a nested mapping: values parsed as TOML scalars (``3``, ``0.5``,
    ``true``, ``'x'``), bare words as strings, dotted keys as nested tables. Raises
    :class:`ConfigError` for an item without ``=`` or a key."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, last = [k.strip() for k in key.split(".")]
        table = out
        for k in parents:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {item!r}: {k} is a value, not a table")
        table[last] = value
    return out


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        out[key] = (
            _merged(old, value)
            if isinstance(old, Mapping) and isinstance(value, Mapping)
            else value
        )
    return out


def with_overrides(config: S, items: Sequence[str] | None) -> S:
    """``config`` with the ``--set`` items applied, validated like a file (keys in either
    spelling, errors naming ``--set``)."""
    if not items:
        return config
    model = type(config)
    # to_dict() holds field names; an override written as a field's alias (num-rounds) must
    # replace that field, not sit beside it.
    alias_of = {f.alias: name for name, f in model.model_fields.items() if f.alias}
    changes = {alias_of.get(k, k): v for k, v in model._key_style(parse_overrides(items)).items()}
    return model.from_mapping(_merged(config.to_dict(), changes), origin="--set")
