"""Split a dataset into federated clients, reproducibly, and write the split as shards plus a
manifest.

Kinds (the usual non-IID benchmarks of federated learning, e.g. NIID-Bench, Li et al. 2022):

- ``attribute``: one client per distinct value of a case attribute (``institution``,
  ``region``, ``sex``, ``source``, or a dotted path such as ``label.diagnosis``): the natural
  partition of real federations. Clients are ordered by value; cases without a value form a
  last client named ``"unknown"``. ``num_clients`` is not used.
- ``iid``: a seeded shuffle cut into ``num_clients`` near-equal parts.
- ``dirichlet``: label skew. For each label, client shares are drawn from Dirichlet(alpha) and
  that label's cases are dealt out accordingly (Hsu et al. 2019). Small alpha (0.1) gives clients
  few labels each; large alpha (100) approaches IID. Draws are repeated (seeded) until every
  client holds at least ``min_size`` cases.
- ``size-skew``: quantity skew. Client sizes are proportional to log-normal(0, sigma) draws
  (sigma 0 is equal sizes), labels stay IID.

Patients: the random kinds (``iid``, ``dirichlet``, ``size-skew``) deal whole patients
(:func:`feddx.data.split.patient_units`: the cases sharing a ``patient_id``), so no patient's
cases are spread over two clients; client sizes are met as closely as whole patients allow.
With one case per patient (no patient ids, UCI Heart, DDXPlus) the partition is exactly the
per-case one. ``attribute`` partitions follow the attribute (a patient treated at two
hospitals is in both hospitals' data, as in a real federation).

Reproducibility: the cases are first ordered by ``case_id``, so the same cases and spec give the
same clients whatever order a loader yields them in; all randomness comes from one
``numpy.random.Generator(seed)``. Each client keeps its cases in ``case_id`` order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import model_validator

from feddx.data.jsonl import load_jsonl, write_jsonl
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.split import patient_units, unit_label
from feddx.data.stage import DeidStage
from feddx.errors import DataError, FeddxError
from feddx.io import atomic_write_json, atomic_write_with, file_sha256, replace_dir, temp_dir_beside
from feddx.settings import Settings

PartitionKind = Literal["attribute", "iid", "dirichlet", "size-skew"]
KINDS: tuple[PartitionKind, ...] = ("attribute", "iid", "dirichlet", "size-skew")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "feddx-partition/1"
UNKNOWN_VALUE = "unknown"
UNLABELED = "<unlabeled>"
_DIRICHLET_TRIES = 1000


class PartitionError(DataError):
    """The requested partition cannot be made from these cases (too few cases for the
    clients, a missing attribute, a bad parameter)."""


class PartitionSpec(Settings):
    """How to partition.

    Parameters
    ----------
    kind : "attribute", "iid", "dirichlet" or "size-skew" (see the module docstring).
    num_clients : number of clients (not used by ``attribute``). Default 5.
    attribute : the Case attribute for ``attribute`` (e.g. "institution"; dotted paths allowed).
    alpha : Dirichlet concentration for ``dirichlet``; smaller is more skewed. Default 0.5.
    sigma : log-normal sigma of the client sizes for ``size-skew``; 0 is equal. Default 1.0.
    seed : seed of every random draw. Default 0.
    min_size : the fewest cases any client may get; a partition that cannot meet it raises
        :class:`PartitionError`. Default 1.
    """

    settings_name: ClassVar[str] = "partition"
    settings_error: ClassVar[type[FeddxError]] = PartitionError

    kind: PartitionKind
    num_clients: int = 5
    attribute: str | None = None
    alpha: float = 0.5
    sigma: float = 1.0
    seed: int = 0
    min_size: int = 1

    def __init__(self, kind: PartitionKind | None = None, /, **data: Any) -> None:
        # The kind may come first, unnamed: PartitionSpec("iid", num_clients=4).
        if kind is not None:
            data["kind"] = kind
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _known_kind(cls, data: Any) -> Any:
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown partition kind {kind!r}; choose one of {KINDS}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PartitionSpec:
        if self.kind == "attribute" and not self.attribute:
            raise ValueError("an attribute partition needs an attribute (e.g. institution)")
        if self.kind != "attribute" and self.num_clients < 1:
            raise ValueError(f"num_clients must be at least 1, got {self.num_clients}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be non-negative, got {self.sigma}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be non-negative, got {self.min_size}")
        return self


def case_attribute(case: Case, attribute: str) -> str | None:
    """The value of ``attribute`` (a field name or dotted path) on ``case`` as a string, or
    ``None`` when absent. Raises :class:`PartitionError` for a name the schema does not have."""
    value: Any = case
    for part in attribute.split("."):
        if value is None:
            return None
        fields = type(value).model_fields if hasattr(type(value), "model_fields") else {}
        if part not in fields:
            known = ", ".join(sorted(fields))
            raise PartitionError(f"no case attribute {attribute!r} (known: {known})")
        value = getattr(value, part)
    return None if value is None else str(value)


def _label(case: Case) -> str:
    return case.label.diagnosis if case.label else UNLABELED


def _check_sizes(parts: list[list[Case]], spec: PartitionSpec, hint: str) -> None:
    small = [(i, len(p)) for i, p in enumerate(parts) if len(p) < spec.min_size]
    if small:
        listed = ", ".join(f"client {i}: {n}" for i, n in small[:5])
        raise PartitionError(
            f"{spec.kind} partition leaves clients below min_size={spec.min_size} ({listed}); {hint}"
        )


def _by_attribute(cases: list[Case], spec: PartitionSpec) -> list[list[Case]]:
    assert spec.attribute is not None
    groups: dict[str | None, list[Case]] = {}
    for case in cases:
        groups.setdefault(case_attribute(case, spec.attribute), []).append(case)
    keys = sorted(k for k in groups if k is not None)
    parts = [groups[k] for k in keys] + ([groups[None]] if None in groups else [])
    _check_sizes(parts, spec, "merge small groups or lower --min-size")
    return parts


def _iid(cases: list[Case], spec: PartitionSpec, rng: np.random.Generator) -> list[list[Case]]:
    _need(cases, spec)
    units = patient_units(cases)
    order = [units[i] for i in rng.permutation(len(units))]
    sizes = [len(c) for c in np.array_split(np.arange(len(cases)), spec.num_clients)]
    return _cut(order, np.cumsum(sizes)[:-1])


def _cut(units: Sequence[Sequence[Case]], bounds: Any) -> list[list[Case]]:
    """Cut the patients in ``units`` (in this order) into consecutive parts whose case counts
    end near ``bounds`` (cumulative case positions): each cut falls on the patient boundary
    nearest it, never inside a patient. One case per patient: exactly at ``bounds``."""
    ends = np.cumsum([0] + [len(u) for u in units])
    cuts: list[int] = []
    for b in bounds:
        j = int(np.argmin(np.abs(ends - b)))  # the first of equally near boundaries
        cuts.append(max(j, cuts[-1] if cuts else 0))
    edges = [0, *cuts, len(units)]
    return [[c for u in units[a:z] for c in u] for a, z in itertools.pairwise(edges)]


def _need(cases: list[Case], spec: PartitionSpec) -> None:
    needed = spec.num_clients * max(spec.min_size, 1)
    if len(cases) < needed:
        raise PartitionError(
            f"{len(cases)} cases cannot fill {spec.num_clients} clients of at least "
            f"{max(spec.min_size, 1)}; use fewer clients"
        )


def _dirichlet(
    cases: list[Case], spec: PartitionSpec, rng: np.random.Generator
) -> list[list[Case]]:
    _need(cases, spec)
    # Each patient's cases are dealt together, under the patient's most frequent diagnosis.
    units = patient_units(cases)
    by_label: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        by_label.setdefault(unit_label(unit) or UNLABELED, []).append(i)
    labels = sorted(by_label)
    k = spec.num_clients
    position = {id(c): i for i, c in enumerate(cases)}
    for _ in range(_DIRICHLET_TRIES):
        assignment: list[list[Case]] = [[] for _ in range(k)]
        for label in labels:
            idx = rng.permutation(by_label[label])
            shares = rng.dirichlet(np.full(k, spec.alpha))
            n = sum(len(units[i]) for i in idx)
            cuts = (np.cumsum(shares)[:-1] * n).astype(int)
            for client, chunk in enumerate(_cut([units[i] for i in idx], cuts)):
                assignment[client].extend(chunk)
        if min(len(a) for a in assignment) >= max(spec.min_size, 1):
            return [sorted(a, key=lambda c: position[id(c)]) for a in assignment]
    raise PartitionError(
        f"no Dirichlet(alpha={spec.alpha}) draw in {_DIRICHLET_TRIES} gave all "
        f"{k} clients at least {max(spec.min_size, 1)} cases; raise alpha or use fewer clients"
    )


def _size_skew(
    cases: list[Case], spec: PartitionSpec, rng: np.random.Generator
) -> list[list[Case]]:
    _need(cases, spec)
    k, floor = spec.num_clients, max(spec.min_size, 1)
    weights = rng.lognormal(mean=0.0, sigma=spec.sigma, size=k)
    # Every client gets min_size, the rest is shared by the weights (largest remainder).
    spare = len(cases) - k * floor
    exact = weights / weights.sum() * spare
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: spare - int(sizes.sum())]:
        sizes[i] += 1
    sizes += floor
    units = patient_units(cases)
    parts = _cut([units[i] for i in rng.permutation(len(units))], np.cumsum(sizes)[:-1])
    return [sorted(p, key=lambda c: c.case_id) for p in parts]


def partition_cases(cases: Sequence[Case], spec: PartitionSpec) -> list[list[Case]]:
    """Split ``cases`` into clients as ``spec`` says; every case lands in exactly one client.

    Raises :class:`PartitionError` when a client would get fewer than ``spec.min_size`` cases,
    and when two cases share a ``case_id`` (the manifest identifies cases by id).
    """
    ordered = sorted(cases, key=lambda c: c.case_id)
    dupes = [a.case_id for a, b in itertools.pairwise(ordered) if a.case_id == b.case_id]
    if dupes:
        # Not quoted: a case id can be a record number, and this message reaches logs.
        raise PartitionError(f"{len(set(dupes))} case ids occur more than once: ids must be unique")
    if not ordered:
        raise PartitionError("no cases to partition")
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "attribute":
        parts = _by_attribute(ordered, spec)
    elif spec.kind == "iid":
        parts = [sorted(p, key=lambda c: c.case_id) for p in _iid(ordered, spec, rng)]
    elif spec.kind == "dirichlet":
        parts = _dirichlet(ordered, spec, rng)
    else:
        parts = _size_skew(ordered, spec, rng)
    _check_sizes(parts, spec, "use fewer clients")
    return parts


def client_names(parts: Sequence[Sequence[Case]], spec: PartitionSpec) -> list[str]:
    """A display name per client: the attribute value for ``attribute`` partitions
    ("unknown" for the client of cases without one), else ``"client <i>"``."""
    if spec.kind != "attribute" or not spec.attribute:
        return [f"client {i}" for i in range(len(parts))]
    values = [case_attribute(p[0], spec.attribute) if p else None for p in parts]
    return [v if v is not None else UNKNOWN_VALUE for v in values]


def partition_grouping(parts: Sequence[Sequence[Case]], spec: PartitionSpec) -> str:
    """How the cases were dealt, for the manifest: whole patients (random kinds) or by the
    attribute (where a patient seen at two institutions is in both)."""
    shared = sum(len(u) > 1 for u in patient_units([c for p in parts for c in p]))
    if spec.kind == "attribute":
        return f"by {spec.attribute} ({shared} patients with several cases)"
    if not shared:
        return "one case per patient"
    return f"grouped by patient: each patient's cases on one client ({shared} with several cases)"


def label_histograms(parts: Sequence[Sequence[Case]]) -> list[dict[str, int]]:
    """Per client, label -> number of cases (most frequent first; ``"<unlabeled>"`` for cases
    without a label)."""
    return [dict(Counter(_label(c) for c in part).most_common()) for part in parts]


def _cases_digest(parts: Sequence[Sequence[Case]]) -> str:
    # The hash of the partitioned input: every case, in case_id order, as its JSON form.
    h = hashlib.sha256()
    for case in sorted((c for p in parts for c in p), key=lambda c: c.case_id):
        h.update(case.model_dump_json(exclude_defaults=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_partition(
    parts: Sequence[Sequence[Case]],
    out_dir: Path,
    spec: PartitionSpec,
    *,
    extra: Mapping[str, Any] | None = None,
    stage: DeidStage | None = None,
) -> Path:
    """Write ``client_<i>.jsonl`` shards and ``manifest.json`` into ``out_dir``; returns the
    manifest path.

    Every case goes through the de-identification ``stage`` on its way to a shard (default: a
    fresh :class:`~feddx.data.stage.DeidStage`, so shards are de-identified by construction);
    cases the stage already de-identified pass through as they are, so de-identify before
    partitioning (the attribute values and any error then name pseudonyms) and pass the same
    stage. ``DeidStage(assume_deidentified=True)`` is the explicit opt-out.

    The manifest holds the spec, the seed, per-client sizes, label histograms, case ids (keyed
    pseudonyms), shard hashes, ``grouping`` (:func:`partition_grouping`), ``input_sha256`` (a hash of all written cases), ``input``
    (``extra``: e.g. the source and path) and ``deidentification`` (the stage's
    :class:`~feddx.data.stage.DeidMarker`: ``true`` or ``"assumed"``, and the key's public
    fingerprint). It has no timestamp, so the same input, spec and key give a byte-identical
    directory. The whole directory is written beside ``out_dir`` and renamed into place: readers
    never see a half-written partition. An existing ``out_dir`` is replaced only if it is empty
    or holds an earlier partition (a ``manifest.json``); anything else raises
    :class:`PartitionError` rather than deleting files that are not ours.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())
    ):
        raise PartitionError(
            f"{out_dir} exists and is not a feddx partition; choose an empty or new directory"
        )
    if stage is None:
        stage = DeidStage()
    parts = [[stage.case(c) for c in part] for part in parts]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out_dir)
    try:
        clients = []
        names = client_names(parts, spec)
        for i, part in enumerate(parts):
            shard = tmp / f"client_{i}.jsonl"
            write_jsonl(part, shard)
            client: dict[str, Any] = {
                "index": i,
                "file": shard.name,
                "n_cases": len(part),
                "sha256": file_sha256(shard),
                "labels": dict(Counter(_label(c) for c in part).most_common()),
                "case_ids": [c.case_id for c in part],
            }
            if spec.kind == "attribute":
                client["attribute_value"] = names[i]
            clients.append(client)
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "spec": spec.to_dict(),
            "seed": spec.seed,
            "num_clients": len(parts),
            "n_cases": sum(len(p) for p in parts),
            "sizes": [len(p) for p in parts],
            "input_sha256": _cases_digest(parts),
            "input": dict(extra or {}),
            "grouping": partition_grouping(parts, spec),
            "deidentification": stage.marker().as_dict(),
            "clients": clients,
        }
        atomic_write_json(tmp / MANIFEST, manifest, ensure_ascii=False)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / MANIFEST


def read_partition(out_dir: Path) -> tuple[dict[str, Any], list[list[Case]]]:
    """The manifest and the clients' cases of a partition written by :func:`write_partition`.

    Raises :class:`DataError` when the manifest is missing or unreadable, or a shard's hash
    does not match the manifest (a changed or truncated shard).
    """
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno})") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    parts = []
    for client in manifest["clients"]:
        shard = Path(out_dir) / client["file"]
        if not shard.is_file() or file_sha256(shard) != client["sha256"]:
            raise DataError(f"{shard}: missing or changed since the manifest was written")
        parts.append(list(load_jsonl(shard, LoadReport("jsonl"))))
    return manifest, parts


def plot_partition(
    parts: Sequence[Sequence[Case]],
    path: Path,
    *,
    names: Sequence[str] | None = None,
    max_labels: int = 20,
) -> Path:
    """Save a stacked bar chart of each client's labels to ``path`` (PNG, atomically).

    ``names`` labels the bars (default "client <i>"). The ``max_labels - 1`` most frequent
    labels get their own colour, the rest are stacked (hatched) as "other", so a 49-label
    dataset stays readable.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hists = label_histograms(parts)
    totals: Counter[str] = Counter()
    for h in hists:
        totals.update(h)
    ranked = [label for label, _ in totals.most_common()]
    shown = ranked if len(ranked) <= max_labels else ranked[: max_labels - 1]
    rest = [label for label in ranked if label not in set(shown)]
    series = [(label, [h.get(label, 0) for h in hists]) for label in shown]
    colours = _colours(len(series))
    if rest:
        series.append(("other", [sum(h.get(label, 0) for label in rest) for h in hists]))
        colours.append("white")  # hatched below: tab20 has greys of its own

    fig = Figure(figsize=(max(6.0, 0.6 * len(parts) + 4.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(parts))
    bottom = np.zeros(len(parts))
    for (label, counts), colour in zip(series, colours, strict=True):
        other = colour == "white"
        ax.bar(
            x,
            counts,
            bottom=bottom,
            label=label,
            color=colour,
            width=0.8,
            hatch="///" if other else None,
            edgecolor="0.5" if other else None,
        )
        bottom += np.asarray(counts, dtype=float)
    ticks = list(names) if names is not None else [f"client {i}" for i in range(len(parts))]
    ax.set_xticks(x, ticks, rotation=45, ha="right")
    ax.set_ylabel("cases")
    ax.set_title(f"{sum(len(p) for p in parts)} cases over {len(parts)} clients")
    ax.legend(fontsize="x-small", bbox_to_anchor=(1.01, 1.0), loc="upper left", frameon=False)
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    return path


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]
