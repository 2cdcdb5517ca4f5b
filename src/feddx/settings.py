"""One idiom for configuration: frozen, validated pydantic models over :class:`Settings`.

Every knob object of feddx (the training config, the LoRA spec, the federated run config, the
loaders' options, de-identification...) derives from :class:`Settings`, so they all behave
alike:

- **frozen and hashable**: a config is a value; change one with :meth:`Settings.replace`,
  which validates the copy like a new config (a mutated config could skip its checks);
- **unknown keys are refused**: a typo never silently falls back to a default;
- **strict types** by default: ``epochs: true`` or ``rank: "8"`` in a file is an error, not
  a coercion (a model sets ``strict=False`` where its input legitimately arrives as other
  types, e.g. Flower's run config);
- **one error format**: a :class:`~feddx.errors.ConfigError` naming where the settings came
  from and the dotted key, without echoing the value (a path or a key can be sensitive)::

      train.yaml: lora.rank must be >= 1
      train.yaml: unknown setting 'lora.rnak' (did you mean 'rank'? known: alpha, ...)

- **plain files**: :meth:`Settings.from_file` reads YAML, JSON or TOML (:func:`read_config_file`)
  and :meth:`Settings.to_dict` gives back JSON/TOML-friendly data that loads to an equal config.

Validators of a subclass raise ``ValueError``: a field validator's message says only what is
wrong (``"must be a non-empty list"``; the key is prepended), a model validator's message names
the fields itself (``"gradient_checkpointing cannot be combined with dp"``).
"""

from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, dataclass_transform

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
)
from pydantic._internal._model_construction import ModelMetaclass  # BaseModel's metaclass

from feddx.errors import ConfigError, FeddxError

__all__ = ["Names", "SettingPath", "Settings", "describe_validation_error", "read_config_file"]


def _names(value: Any) -> Any:
    # Files hold lists; a single name is a list of one (as before the pydantic models).
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
"""A list of names: a YAML/JSON/TOML list (or one string) in a file, a tuple in memory (so the
settings stay hashable)."""

SettingPath = Annotated[Path, Strict(False)]
"""A filesystem path, given as a string in a file (``to_dict`` writes it back as one)."""


# Restated for mypy, which applies pydantic's own transform only to ModelMetaclass itself: with
# it, constructing a settings model in code is type-checked field by field.
@dataclass_transform(kw_only_default=True, field_specifiers=(Field, PrivateAttr))
class _SettingsMeta(ModelMetaclass):
    """Turns a failed construction in code (``TrainConfig(epochs=0)``) into the model's
    ``settings_error``. Done here, not in ``__init__``: a model that overrides ``__init__`` has
    pydantic call it for nested settings too, and the nested error would lose its dotted key."""

    if not typing.TYPE_CHECKING:  # hidden from mypy, which then checks each model's fields

        def __call__(cls, *args, **kwargs):
            try:
                return super().__call__(*args, **kwargs)
            except ValidationError as e:
                raise cls.settings_error(
                    f"{cls.settings_name}: {describe_validation_error(e, cls)}"
                ) from None


class Settings(BaseModel, metaclass=_SettingsMeta):
    """Base of every configuration model (see the module docstring).

    Class attributes a subclass may set:

    ``settings_name``
        How errors of a config built in code (``TrainConfig(epochs=0)``) name their origin.
    ``settings_error``
        The :class:`~feddx.errors.FeddxError` subclass raised (``ConfigError`` by default; the
        data layer's partition spec raises its own ``PartitionError``).
    ``file_section``
        A file may hold the settings under this one top-level key (``[train]``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    settings_name: ClassVar[str] = "config"
    settings_error: ClassVar[type[FeddxError]] = ConfigError
    file_section: ClassVar[str | None] = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, origin: str | None = None) -> Self:
        """Validate plain data (a parsed file, CLI overrides).

        Raises ``settings_error`` (a :class:`ConfigError` unless the model says otherwise)
        naming ``origin`` (default ``settings_name``) and the dotted key of every unknown key,
        wrong type and out-of-range value.
        """
        where = origin or cls.settings_name
        if not isinstance(data, Mapping):
            raise cls.settings_error(
                f"{where}: expected a table of settings, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(cls._key_style(data))
        except ValidationError as e:
            raise cls.settings_error(f"{where}: {describe_validation_error(e, cls)}") from None

    @classmethod
    def _key_style(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with each key in the spelling this model declares: files may write
        ``learning-rate`` (kebab-case, as Flower's run config) or ``learning_rate`` for any
        model, at any depth (``lora.top-layers``). A key unknown in both spellings is kept
        as written, so the error names it as the user wrote it."""
        fields = cls.model_fields
        by_name = {name: name for name in fields}
        by_name.update({f.alias: name for name, f in fields.items() if f.alias})
        out: dict[str, Any] = {}
        for key, value in data.items():
            written = key
            if isinstance(key, str) and key not in by_name:
                for other in (key.replace("-", "_"), key.replace("_", "-")):
                    if other in by_name:
                        key = other
                        break
            name = by_name.get(key) if isinstance(key, str) else None
            nested = _settings_class(fields[name].annotation) if name else None
            if nested is not None and isinstance(value, Mapping):
                value = nested._key_style(value)
            out[key if name else written] = value
        return out

    @classmethod
    def from_file(cls, path: Path) -> Self:
        """Load a ``.yaml``/``.yml``, ``.json`` or ``.toml`` file of settings (at the top level,
        or under ``file_section``); errors name the file."""
        data = read_config_file(path)
        section = cls.file_section
        if section is not None and set(data) == {section} and isinstance(data[section], dict):
            data = data[section]
        return cls.from_mapping(data, origin=str(path))

    def replace(self, **changes: Any) -> Self:
        """A copy with some settings changed (by field name or alias), validated like a new
        config."""
        by_alias = {f.alias: name for name, f in type(self).model_fields.items() if f.alias}
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update({by_alias.get(k, k): v for k, v in changes.items()})
        return type(self)(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-friendly data (tuples as lists, paths as strings);
        ``from_mapping(to_dict())`` gives an equal config."""
        return self.model_dump(mode="json")


def _settings_class(annotation: Any) -> type[Settings] | None:
    """The :class:`Settings` model a field holds (``LoraSpec``, ``LoraSpec | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, Settings):
        return annotation
    for arg in typing.get_args(annotation):
        found = _settings_class(arg)
        if found is not None:
            return found
    return None


# -------------------------------------------------------------------- files
def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML file into a dict, or raise :class:`ConfigError` saying why."""
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw) or {}
        elif suffix == ".json":
            data = json.loads(raw)
        elif suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ConfigError(
                f"{path}: unknown config format {suffix!r} (use .yaml, .json or .toml)"
            )
    except ConfigError:
        raise
    except Exception as e:  # each parser has its own exception type; all mean "malformed"
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: cannot parse {suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    return data


# -------------------------------------------------------------------- error messages
# Beyond this many settings, an unknown key's message names only the close matches.
_MAX_LISTED = 20
# pydantic's tag for each member of a failed union of scalars, at the end of the error's loc.
_UNION_TAGS = {"bool", "int", "float", "str", "none", "list", "tuple", "dict"}
_TYPE_NAMES = {
    "int_type": "int",
    "int_parsing": "int",
    "int_from_float": "int",
    "float_type": "float",
    "float_parsing": "float",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "string_type": "str",
    "tuple_type": "a list",
    "list_type": "a list",
    "set_type": "a list",
    "model_type": "a table of settings",
    "model_attributes_type": "a table of settings",
    "dict_type": "a table of settings",
    "mapping_type": "a table of settings",
}


def describe_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line naming every offending key of ``model`` by its dotted name (aliases where the
    model uses them), in feddx's words (``must be >= 1``, ``must be one of a, b``,
    ``unknown setting 'x' (known: ...)``). Input values are never quoted, only their types."""
    # Ordered slots: a message, or the members of a failed union of scalars
    # (`bool | int | float | str` fails once per member: said once, naming all of them).
    slots: dict[Any, str | list[str]] = {}
    got: dict[Any, str] = {}
    for i, e in enumerate(error.errors(include_url=False)):
        loc = tuple(e["loc"])
        if e["type"] in _TYPE_NAMES and loc and loc[-1] in _UNION_TAGS:
            members = slots.setdefault(("union", loc[:-1]), [])
            assert isinstance(members, list)
            members.append(_TYPE_NAMES[e["type"]])
            got[("union", loc[:-1])] = _type_name(e.get("input"))
        else:
            slots[i] = _describe_one(e, loc, model)
    parts = []
    for slot, text in slots.items():
        if isinstance(text, list):
            key = ".".join(_walk(slot[1], model)[0])
            text = f"{key} must be {'/'.join(dict.fromkeys(text))}, got {got[slot]}"
        parts.append(text)
    return "; ".join(parts)


def _describe_one(e: Any, loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    kind = e["type"]
    names, field, nested = _walk(loc, model)
    key = ".".join(names)
    if kind == "extra_forbidden":
        parent = _walk(loc[:-1], model)[2]
        known = sorted(_display_names(parent)) if parent is not None else []
        close = [".".join([*names[:-1], c]) for c in difflib.get_close_matches(str(loc[-1]), known)]
        guess = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if guess and len(known) > _MAX_LISTED:
            return f"unknown setting {key!r} ({guess})"  # a long list would bury the guess
        return f"unknown setting {key!r} ({guess + ' ' if guess else ''}known: {', '.join(known)})"
    if kind == "missing":
        return f"{key} is required"
    if kind in _TYPE_NAMES:
        return f"{key} must be {_TYPE_NAMES[kind]}, got {_type_name(e.get('input'))}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key} must be {_bounds(field, e.get('ctx') or {})}"
    if kind == "finite_number":
        return f"{key} must be a finite number"
    if kind == "literal_error":
        expected = str((e.get("ctx") or {}).get("expected", ""))
        choices = [c.strip("'\"") for c in expected.replace(" or ", ", ").split(", ") if c]
        return f"{key} must be one of {', '.join(choices)}"
    message = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error"):
        if not loc:
            return message  # the model's own validator: its message names the fields
        if nested is not None:
            return f"{key}.{message}"  # a nested model's validator
        return f"{key} {message}"  # a field validator: its message says only what is wrong
    return f"{key} {message.replace('Input should be', 'must be')}"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _bounds(field: Any, ctx: Mapping[str, Any]) -> str:
    """``in [0, 1)``, ``>= 1``...: from the field's constraints, else from the failed one."""
    lower: tuple[str, str, Any] | None = None
    upper: tuple[str, str, Any] | None = None
    for c in getattr(field, "metadata", ()):  # annotated_types' Ge/Gt/Le/Lt, from Field(...)
        if getattr(c, "ge", None) is not None:
            lower = ("[", ">=", c.ge)
        elif getattr(c, "gt", None) is not None:
            lower = ("(", ">", c.gt)
        elif getattr(c, "le", None) is not None:
            upper = ("]", "<=", c.le)
        elif getattr(c, "lt", None) is not None:
            upper = (")", "<", c.lt)
    if lower is not None and upper is not None:
        return f"in {lower[0]}{_number(lower[2])}, {_number(upper[2])}{upper[0]}"
    if lower is not None or upper is not None:
        bound = lower or upper
        assert bound is not None
        return f"{bound[1]} {_number(bound[2])}"
    for name, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if name in ctx:
            return f"{op} {_number(ctx[name])}"
    return "in range"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _display_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def _walk(loc: tuple[Any, ...], model: type[BaseModel]) -> tuple[list[str], Any, Any]:
    """Follow ``loc`` through ``model``'s fields: the display names (aliases where the model
    has them) along it, the field it ends at (``None`` if it left the known fields), and the
    settings model it ends at (``model`` itself for an empty ``loc``; ``None`` at a scalar)."""
    names: list[str] = []
    current: type[BaseModel] | None = model
    field: Any = None
    for part in loc:
        field = None
        if current is not None:
            for name, f in current.model_fields.items():
                if part in (name, f.alias):
                    names.append(f.alias or name)
                    field = f
                    break
        if field is None:
            names.append(str(part))
            current = None
        else:
            current = _nested_model(field.annotation)
    return names, field, current
