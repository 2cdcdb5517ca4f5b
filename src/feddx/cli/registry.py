"""``feddx registry``: list, show, add, delete, verify and resolve the adapters of an adapter
registry (:mod:`feddx.personalize.registry`)."""

from __future__ import annotations

import json
import logging
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from feddx.cli._app import app, console, console_err
from feddx.errors import ConfigError
from feddx.model.loading import DEFAULT_MODEL
from feddx.paths import registry_root
from feddx.personalize.registry import AdapterEntry, AdapterRegistry

registry_app = typer.Typer(
    help="The adapter registry: global, regional and institutional adapters, checked on load.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


class KindOption(StrEnum):
    adapter = "adapter"
    case_index = "case-index"


class LevelOption(StrEnum):
    global_ = "global"
    regional = "regional"
    institutional = "institutional"


RootOption = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Registry folder (default: $FEDDX_REGISTRY, else ~/.local/share/feddx/registry).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON value and nothing else.")]


def _open(root: Path | None, *, create: bool = False) -> AdapterRegistry:
    """The registry at ``root`` (default :func:`registry_root`); only ``add`` creates one."""
    return AdapterRegistry(root or registry_root(), create=create)


def _emit(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, allow_nan=False))


def _plain(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _scope(entry: AdapterEntry) -> str:
    if entry.level == "institutional" and entry.region:
        return f"{entry.institution} ({entry.region})"
    return entry.scope or "-"


def _metrics_text(metrics: dict[str, float], limit: int = 3) -> str:
    shown: list[str] = [k for k in ("top1", "top3", "macro_f1", "val_loss") if k in metrics]
    shown += [k for k in sorted(metrics) if k not in shown]
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in shown[:limit])


@registry_app.command("list")
def list_(
    level: Annotated[LevelOption | None, typer.Option(help="Only this level.")] = None,
    region: Annotated[str | None, typer.Option(help="Only this region.")] = None,
    institution: Annotated[str | None, typer.Option(help="Only this institution.")] = None,
    kind: Annotated[
        KindOption | None, typer.Option(help="Only this kind (adapter or case-index).")
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the registered entries, adapters and case indexes (least specific level first,
    oldest version first); each says its kind."""
    registry = _open(root)
    found = registry.entries(
        level=level.value if level else None,
        region=region,
        institution=institution,
        kind=kind.value if kind else None,
    )
    if as_json:
        _emit([e.to_dict() for e in found])
        return
    if not found:
        _plain(f"No adapters registered in {registry.root}.")
        return
    rows = [("id", "kind", "scope", "parent", "base model", "budget", "T", "round", "metrics")]
    rows += [
        (
            e.adapter_id,
            e.kind,
            _scope(e),
            e.parent_id or "-",
            e.base_fingerprint,
            str(e.max_prompt_tokens) if e.kind == "adapter" else "-",
            f"{e.temperature:.3g}" if e.kind == "adapter" else "-",
            "-" if e.training_round is None else str(e.training_round),
            _metrics_text(e.metrics) or "-",
        )
        for e in found
    ]
    # Plain aligned columns, never wrapped: ids and fingerprints stay whole and greppable.
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _plain("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@registry_app.command()
def show(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id, e.g. regional/europe/v1.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every recorded field of one adapter, whether its files are intact, and its children."""
    registry = _open(root)
    entry = registry.get(adapter_id)
    status = registry.check(entry, fresh=True) or "ok"
    record = {**entry.to_dict(), "status": status, "children": registry.children(adapter_id)}
    if as_json:
        _emit(record)
        return
    for key, value in record.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        _plain(f"{key:18} {'-' if value is None else value}")


@registry_app.command()
def add(
    adapter_dir: Annotated[
        Path, typer.Argument(help="Adapter folder (or a `feddx train` output folder).")
    ],
    level: Annotated[LevelOption, typer.Option(help="Hierarchy level.")],
    region: Annotated[str | None, typer.Option(help="Region (regional; optional else).")] = None,
    institution: Annotated[
        str | None, typer.Option(help="Institution (institutional adapters).")
    ] = None,
    parent: Annotated[
        str | None, typer.Option("--parent", help="Id of the adapter it was fine-tuned from.")
    ] = None,
    training_round: Annotated[
        int | None, typer.Option("--round", min=0, help="Training or federated round.")
    ] = None,
    metrics_json: Annotated[
        Path | None,
        typer.Option("--metrics-json", help="JSON file with an object of metric -> number."),
    ] = None,
    data_fingerprint: Annotated[
        str | None,
        typer.Option(help="Hash of the training data (see feddx.personalize.data_fingerprint)."),
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register an adapter folder as the next version of its level and scope."""
    metrics = _read_metrics(metrics_json) if metrics_json else None
    registry = _open(root, create=True)
    entry = registry.register(
        adapter_dir,
        level=level.value,
        region=region,
        institution=institution,
        parent_id=parent,
        training_round=training_round,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
    )
    if as_json:
        _emit(entry.to_dict())
        return
    _plain(f"Registered {entry.adapter_id} in {registry.root}")


def _read_metrics(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"--metrics-json {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"--metrics-json {path}: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--metrics-json {path}: expected an object of metric -> number")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"--metrics-json {path}: metric {key} is not a finite number")
        out[str(key)] = float(value)
    return out


@registry_app.command()
def delete(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    root: RootOption = None,
) -> None:
    """Delete an adapter's row and folder (its version number is never reused)."""
    registry = _open(root)
    registry.get(adapter_id)  # unknown ids fail before the question
    children = registry.children(adapter_id)
    if not yes:
        also = (
            f" {len(children)} adapter(s) descend from it and will stop resolving "
            f"({', '.join(children)})."
            if children
            else ""
        )
        typer.confirm(f"Delete {adapter_id} from {registry.root}?{also}", abort=True)
    registry.delete(adapter_id)
    _plain(f"Deleted {adapter_id}")


@registry_app.command()
def verify(
    adapter_id: Annotated[
        str | None, typer.Argument(help="One adapter id (default: every adapter).")
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check adapters against their registered content hashes; exit 1 if any is refused.

    Without an id, also removes what interrupted registrations left behind.
    """
    registry = _open(root)
    removed: list[str] = []
    if adapter_id is not None:
        checked = [registry.get(adapter_id)]
    else:
        removed = registry.clean_orphans()
        checked = registry.entries(kind=None)
    results = [(e.adapter_id, registry.check(e, fresh=True)) for e in checked]
    refused = [(i, why) for i, why in results if why is not None]
    if as_json:
        _emit(
            {
                "root": str(registry.root),
                "ok": [i for i, why in results if why is None],
                "refused": [{"adapter_id": i, "reason": why} for i, why in refused],
                "orphans_removed": removed,
            }
        )
    else:
        for path in removed:
            _plain(f"removed {path} (left by an interrupted registration)")
        for i, why in results:
            if why is None:
                _plain(f"ok       {i}")
        for i, why in refused:
            console_err.print(
                f"feddx: error: adapter {i} refused: {why}", markup=False, highlight=False
            )
        if adapter_id is None:
            _plain(
                f"{len(results)} adapter(s): {len(results) - len(refused)} ok, {len(refused)} refused"
            )
    if refused:
        raise typer.Exit(code=1)


@registry_app.command()
def resolve(
    institution: Annotated[str | None, typer.Option(help="The requesting institution.")] = None,
    region: Annotated[
        str | None, typer.Option(help="Its region (default: the one it is registered under).")
    ] = None,
    model: Annotated[
        str, typer.Option(help="Base model (alias, .gguf, directory, hub id).")
    ] = DEFAULT_MODEL,
    base_fingerprint: Annotated[
        str | None,
        typer.Option(help="Base-model fingerprint (instead of reading it from --model)."),
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Which adapter answers for an institution, its lineage, its case index, and every
    entry skipped."""
    registry = _open(root)
    from feddx.model.loading import base_fingerprint as fingerprint_of

    fingerprint = base_fingerprint or fingerprint_of(model)
    # The skipped adapters are printed below; the resolver's own warnings would repeat them.
    logging.getLogger("feddx.personalize.hierarchy").setLevel(logging.ERROR)
    chain = registry.resolve(institution=institution, region=region, base_fingerprint=fingerprint)
    if as_json:
        _emit({**chain.to_dict(), "base_fingerprint": fingerprint})
        return
    answering = chain.answering
    _plain(f"base model  {fingerprint}")
    _plain(f"chain       {' > '.join(chain.ids()) or '-'}")
    _plain(f"answering   {answering.adapter_id if answering else 'none: no usable adapter'}")
    if chain.case_index is not None:  # the institution's retrieval index, resolved with it
        _plain(f"case index  {chain.case_index.adapter_id}")
    for line in chain.fallbacks:
        _plain(f"fallback    {line}")
    for line in chain.unknown:  # an answer from a less specific level, not its own adapter
        shown = answering.adapter_id if answering else "no adapter"
        _plain(f"unknown     {line}: answering with {shown}")
