"""Which registered adapter answers for a hospital: the most specific usable one, with its
lineage (institution > region > global), and a logged reason for every adapter passed over.

A request names an institution and maybe a region. Its answer should come from the adapter
closest to it: the institution's own, else its region's, else the global one; within a level,
the newest version. An adapter is usable only if its files are intact (content hash), it was
trained for the loaded base model, and every adapter it descends from is usable too: an
institutional adapter fine-tuned from a regional one whose folder was deleted or damaged is
passed over rather than served with an unverifiable history. Each skipped adapter becomes one
``WARNING`` log line and one line of :attr:`ResolvedChain.fallbacks`, holding adapter ids and
reasons only (never data).

Verification goes through :meth:`feddx.personalize.registry.AdapterRegistry.check`, which
caches by file size, mtime and inode: resolving per request re-hashes nothing that has not
changed on disk.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from feddx.errors import ModelError

log = logging.getLogger(__name__)

ChainLevel = Literal["global", "regional", "institutional"]


class ChainEntry(Protocol):
    """What resolving reads of a registered adapter (an
    :class:`~feddx.personalize.registry.AdapterEntry` is one): a protocol here, so that this
    module needs nothing from the registry that imports it."""

    @property
    def adapter_id(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def level(self) -> ChainLevel: ...
    @property
    def region(self) -> str | None: ...


E = TypeVar("E", bound=ChainEntry)


class EntrySource(Protocol[E]):
    """The part of :class:`~feddx.personalize.registry.AdapterRegistry` resolving uses."""

    def check(self, entry: E, *, base_fingerprint: str) -> str | None: ...
    def get(self, adapter_id: str) -> E: ...
    def entries(
        self,
        *,
        level: ChainLevel | None = None,
        region: str | None = None,
        institution: str | None = None,
    ) -> list[E]: ...


@dataclass(frozen=True)
class ResolvedChain(Generic[E]):
    """The answer of :func:`resolve_chain`.

    ``entries`` is the answering adapter's lineage, least specific first (``global/v2``,
    ``regional/europe/v1``, ``institutional/cleveland/v3``): each entry's parent is the entry
    before it. ``fallbacks`` holds one line per adapter passed over, in the order they were
    tried: ``"<adapter id> skipped: <reason>"``.
    """

    entries: tuple[E, ...]
    fallbacks: tuple[str, ...]
    # Names asked for that no adapter of the registry is registered under ("institution
    # nobody is unknown to this registry"): the answer then comes from a less specific level,
    # which a caller must be told rather than take for the institution's own.
    unknown: tuple[str, ...] = ()

    @property
    def answering(self) -> E | None:
        """The adapter that scores (the last entry); ``None`` when no adapter is usable."""
        return self.entries[-1] if self.entries else None

    def ids(self) -> list[str]:
        """The adapter ids of the chain, least specific first."""
        return [e.adapter_id for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the chain's ids, the answering id and the fallback lines."""
        answering = self.answering
        return {
            "chain": self.ids(),
            "answering": answering.adapter_id if answering else None,
            "fallbacks": list(self.fallbacks),
            "unknown": list(self.unknown),
        }


def resolve_chain(
    registry: EntrySource[E],
    *,
    institution: str | None,
    region: str | None,
    base_fingerprint: str,
    logged: MutableMapping[str, str] | None = None,
) -> ResolvedChain[E]:
    """The most specific usable chain for (``institution``, ``region``) on the base model
    ``base_fingerprint``; names as normalised by the registry.

    Candidates, most preferred first: the institution's adapters (newest version first), then
    the region's (the one given, else the one the institution is registered under), then the
    global ones. The first candidate that is intact, for this base model and whose whole
    lineage is too, answers. Never raises for a damaged adapter: it is skipped and reported.

    ``unknown`` names an institution (or a region given) under which no adapter is registered
    at all: the answer then comes from a less specific level.

    ``logged`` (adapter id -> last warning) keeps a service that resolves per request from
    repeating the same warning: a skip is logged again only when its message changes.
    """
    verdicts = _Verdicts(registry, base_fingerprint)
    candidates, region, unknown = _candidates(registry, institution, region)
    skipped: list[tuple[str, str]] = []
    chosen: list[E] = []
    for entry in candidates:
        why: str | None = None
        if entry.level == "institutional" and entry.region and entry.region != region:
            why = f"other region (registered under {entry.region}, not {region})"
        if why is None:
            why = verdicts.problem(entry)
        if why is None:
            chosen, why = _lineage(registry, entry, verdicts)
        if why is None:
            break
        skipped.append((entry.adapter_id, why))
    _log_skips(skipped, chosen[-1].adapter_id if chosen else None, logged)
    return ResolvedChain(
        entries=tuple(chosen),
        fallbacks=tuple(f"{adapter_id} skipped: {why}" for adapter_id, why in skipped),
        unknown=tuple(unknown),
    )


class _Verdicts(Generic[E]):
    """Each entry's :meth:`EntrySource.check` for one base model, asked once per resolve."""

    def __init__(self, registry: EntrySource[E], base_fingerprint: str) -> None:
        self.registry = registry
        self.base_fingerprint = base_fingerprint
        self.seen: dict[str, str | None] = {}

    def problem(self, entry: E) -> str | None:
        """Why ``entry`` cannot answer (damaged, other base model), or ``None``."""
        if entry.adapter_id not in self.seen:
            self.seen[entry.adapter_id] = self.registry.check(
                entry, base_fingerprint=self.base_fingerprint
            )
        return self.seen[entry.adapter_id]


def _candidates(
    registry: EntrySource[E], institution: str | None, region: str | None
) -> tuple[list[E], str | None, list[str]]:
    """The candidates, most preferred first (the institution's, newest first; its region's;
    the global ones), the region they are resolved under (the one asked, else the one the
    institution is registered under) and the ``unknown`` lines."""
    own = registry.entries(level="institutional", institution=institution) if institution else []
    registered_region = next((e.region for e in reversed(own) if e.region), None)
    asked_region = region
    region = region or registered_region
    candidates = list(reversed(own))
    regional = registry.entries(level="regional", region=region) if region else []
    candidates += reversed(regional)
    candidates += reversed(registry.entries(level="global"))
    unknown: list[str] = []
    if institution and not own:
        unknown.append(f"institution {institution} is unknown to this registry")
    if (
        asked_region
        and not regional
        and not any(e.region == asked_region for e in registry.entries(level="institutional"))
    ):
        unknown.append(f"region {asked_region} is unknown to this registry")
    return candidates, region, unknown


def _lineage(
    registry: EntrySource[E], entry: E, verdicts: _Verdicts[E]
) -> tuple[list[E], str | None]:
    """``entry``'s chain of ancestors, least specific first, or ``([], reason)`` when one of
    them is missing, unusable, or the lineage loops."""
    chain = [entry]
    while chain[0].parent_id is not None:
        parent_id = chain[0].parent_id
        if any(e.adapter_id == parent_id for e in chain):
            return [], f"corrupt (its lineage loops at {parent_id})"
        try:
            parent = registry.get(parent_id)
        except ModelError:
            return [], f"missing parent ({parent_id} is not in the registry)"
        why = verdicts.problem(parent)
        if why is not None:
            return [], f"unusable parent ({parent_id}: {why})"
        chain.insert(0, parent)
    return chain, None


def _log_skips(
    skipped: list[tuple[str, str]], answer: str | None, logged: MutableMapping[str, str] | None
) -> None:
    """One warning per skipped adapter; with ``logged``, only when its message changed."""
    for adapter_id, why in skipped:
        message = f"adapter {adapter_id} skipped: {why}; " + (
            f"falling back to {answer}" if answer else "no usable adapter is left"
        )
        if logged is None or logged.get(adapter_id) != message:
            log.warning("%s", message)
            if logged is not None:
                logged[adapter_id] = message


__all__ = ["ChainEntry", "EntrySource", "ResolvedChain", "resolve_chain"]
