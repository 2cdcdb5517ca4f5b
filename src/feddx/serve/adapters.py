"""Which adapter answers a caller, and keeping it loaded: the registry's chain per institution, a
bounded LRU of adapters held in the :class:`~feddx.model.predict.Diagnoser`, new versions picked
up without a restart, a corrupt adapter replaced by its parent.

Only the scoring thread calls :class:`AdapterPool` (it touches the Diagnoser, which is not
thread-safe). Per batch it compares the registry's :meth:`generation` with the one it resolved
against, so an adapter registered by a trainer answers the next batch. The resolver
(``AdapterRegistry.resolve``) already skips missing, corrupt and other-base adapters; the pool
also falls back when an adapter that verified fails to load into the Diagnoser (a file changed
between the two, another LoRA layout), and the answer says which chain answered and what was
skipped.

**Candidates** (decided here, documented in the README): the answering adapter's own list, in
its ``feddx_adapter.json`` metadata ``candidates`` (names) and ``icd10`` (name -> code; the
older key ``candidates_icd10`` is read too); else the label space of the data source it records
(``metadata.data``) when that source has a fixed one (``uci-heart``); else the service's
``candidates`` setting; else the request is refused (503) naming the adapter. An adapter whose
own list is not the service's list (as a set of names), or not the list a request names, is
refused (503) naming the adapter: its scores would rank diagnoses it was never trained to tell
apart, or leave out ones the caller expects.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from feddx.data.candidates import CandidateList, candidate_list
from feddx.errors import ConfigError, FeddxError, ModelError

if TYPE_CHECKING:
    from feddx.model.predict import Diagnoser
    from feddx.serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class RegistryEntry(Protocol):
    """What the service reads of an ``AdapterEntry`` (``feddx.personalize.registry``)."""

    @property
    def adapter_id(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def region(self) -> str | None: ...
    @property
    def institution(self) -> str | None: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def version(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def base_fingerprint(self) -> str: ...
    @property
    def training_round(self) -> int | None: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def created_at(self) -> str: ...


class ResolvedChainLike(Protocol):
    @property
    def entries(self) -> Sequence[RegistryEntry]: ...
    @property
    def fallbacks(self) -> Sequence[str]: ...


class Registry(Protocol):
    """The part of ``AdapterRegistry`` the service uses."""

    def resolve(
        self, *, institution: str | None, region: str | None, base_fingerprint: str
    ) -> ResolvedChainLike: ...
    def get(self, adapter_id: str) -> RegistryEntry: ...
    def verify(self, adapter_id: str) -> RegistryEntry: ...
    def entries(
        self,
        *,
        level: Any = None,
        region: str | None = None,
        institution: str | None = None,
    ) -> Sequence[RegistryEntry]: ...
    def generation(self) -> int: ...
    @property
    def db_path(self) -> Path: ...


def open_registry(root: Path) -> Registry:
    """The adapter registry at ``root`` (``feddx.personalize.registry.AdapterRegistry``)."""
    from feddx.personalize.registry import AdapterRegistry

    registry: Registry = AdapterRegistry(Path(root))
    return registry


class AdapterNotFound(FeddxError):
    """A pinned adapter id is not in the registry (HTTP 404)."""


class AdapterForbidden(FeddxError):
    """A pinned adapter belongs to another institution or region (HTTP 403)."""


class NoCandidates(FeddxError):
    """The answering adapter records no candidate list and the service has none (HTTP 503)."""


class NoVerifiedAdapter(FeddxError):
    """No adapter of the caller's chain verifies and the base model may not answer alone
    (HTTP 503; the ``base_model_fallback`` setting allows it)."""


class RegistryUnavailable(FeddxError):
    """The adapter registry cannot be read (its folder or database is gone; HTTP 503)."""


def registry_problem(registry: Registry | None) -> str | None:
    """``None`` while ``registry``'s database file is on disk, else why not (one line, no
    path). Checked on disk, not through the open SQLite connection: a connection keeps
    reading a database whose file was deleted, which is how a removed registry kept
    answering with adapters it could no longer verify."""
    if registry is None:
        return None
    try:
        if registry.db_path.is_file() and os.access(registry.db_path, os.R_OK):
            return None
    except OSError:
        pass
    return "the adapter registry is unreadable (its database file is missing)"


class CandidatesMismatch(FeddxError):
    """The answering adapter was trained on another candidate list than the service's or the
    request's (HTTP 503)."""


def check_candidates(
    who: str, own: Sequence[str], expected: Sequence[str], whose: str, *, quote: bool = True
) -> None:
    """Raise :class:`CandidatesMismatch` (one line naming ``who``) unless ``own`` and
    ``expected`` hold the same names (order aside). ``quote=False`` (a list the caller sent)
    counts the names only ``expected`` holds instead of quoting them: a reply never echoes
    what a caller sent."""
    extra, missing = sorted(set(own) - set(expected)), sorted(set(expected) - set(own))
    if not extra and not missing:
        return

    def listed(names: list[str], quoted: bool) -> str:
        if not quoted:
            return f"{len(names)} name{'s' if len(names) != 1 else ''}"
        return f"{', '.join(repr(n) for n in names[:3])}{' ...' if len(names) > 3 else ''}"

    differ = "; ".join(
        f"{label} {listed(names, quoted)}"
        for label, names, quoted in (
            ("only the adapter's:", extra, True),
            (f"only the {whose}:", missing, quote),
        )
        if names
    )
    raise CandidatesMismatch(
        f"{who} was trained on {len(own)} candidates that differ from the {whose} list of "
        f"{len(expected)} ({differ})"
    )


@dataclass(frozen=True)
class ChainAnswer:
    """The chain that will answer (global first, answering last), what was skipped, and the
    candidates it ranks. ``answering`` ``None``: the base model alone."""

    entries: tuple[RegistryEntry, ...]
    fallbacks: tuple[str, ...]
    candidates: CandidateList
    # What the registry does not know of the caller ("institution x is unknown to this
    # registry"): the answer then comes from a less specific level, and says so.
    unknown: tuple[str, ...] = ()
    # The institution's case index (registry entry of kind case-index), if it has one.
    case_index: RegistryEntry | None = None

    @property
    def institution_known(self) -> bool:
        """Whether the registry holds anything of the caller's institution (an adapter or a
        case index); ``False``: it is answered by its region's or the global adapter."""
        return not any(u.startswith("institution ") for u in self.unknown)

    @property
    def answering(self) -> RegistryEntry | None:
        return self.entries[-1] if self.entries else None

    @property
    def base_model_only(self) -> bool:
        """The untuned base model answers (only with ``base_model_fallback`` set)."""
        return not self.entries

    @property
    def adapter_name(self) -> str | None:
        return self.entries[-1].adapter_id if self.entries else None

    def ids(self) -> list[str]:
        return [e.adapter_id for e in self.entries]


def may_use(entry: RegistryEntry, institution: str, region: str | None) -> bool:
    """Whether an institution (in ``region``) may be answered by ``entry``: the global
    adapters, its own region's, and its own (names compared as the registry stores them)."""
    if entry.level == "global":
        return True
    if entry.level == "regional":
        return region is not None and entry.region == scope_name(region)
    return entry.institution == scope_name(institution)


def scope_name(name: str) -> str:
    """``name`` as the registry stores institution and region names (``Hospital A`` ->
    ``hospital-a``); unchanged if the registry would refuse it."""
    from feddx.personalize.registry import normalize_scope

    try:
        return normalize_scope(name)
    except ConfigError:
        return name


def default_candidates(spec: str | None) -> CandidateList | None:
    """The ``candidates`` setting as a list: a pathless data source (``uci-heart``) or a file
    of names. Raises :class:`ConfigError` for anything else."""
    if not spec:
        return None
    from feddx.data.sources import PATHLESS

    if spec in PATHLESS:
        return candidate_list(spec, None, [])
    path = Path(spec)
    if path.is_file():
        return candidate_list("file", path, [], candidates_file=path)
    raise ConfigError(
        f"candidates setting {spec!r} is neither a data source with a fixed label space "
        f"({', '.join(sorted(PATHLESS))}) nor a file"
    )


def adapter_candidates(metadata: Mapping[str, Any]) -> CandidateList | None:
    """The candidate list an adapter's metadata records (see the module docstring)."""
    names = metadata.get("candidates")
    if isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names):
        codes = metadata.get("icd10", metadata.get("candidates_icd10"))
        icd10 = (
            {k: v for k, v in codes.items() if isinstance(v, str)}
            if isinstance(codes, dict)
            else {}
        )
        return CandidateList(list(names), icd10)
    data = metadata.get("data")
    if isinstance(data, str):
        from feddx.data.sources import PATHLESS

        source = data.split(":", 1)[0]
        if source in PATHLESS:
            return candidate_list(source, None, [])
    return None


class AdapterPool:
    """Resolves callers' chains and keeps their adapters held in ``diagnoser``.

    Parameters
    ----------
    diagnoser
        The scorer's Diagnoser (base model loaded once).
    registry
        The adapter registry, or ``None`` (every caller gets the base model alone).
    capacity
        Adapters held at once; the least recently used is removed beyond it.
    candidates
        The service's default candidate list (the ``candidates`` setting).
    resolve_ttl_s
        A resolved chain is reused until the registry's generation changes or this many
        seconds pass (so an adapter whose files were damaged on disk is noticed).
    base_model_fallback
        When no adapter of a caller's chain verifies (or the registry is unreadable), answer
        with the untuned base model, marked as such. Off (the default): refuse with
        :class:`NoVerifiedAdapter` or :class:`RegistryUnavailable` (HTTP 503), because the
        base model ranks diagnoses confidently and badly (it answered "No coronary artery
        disease" at 97-99% for every caller when a registry was removed under a service).
    """

    def __init__(
        self,
        diagnoser: Diagnoser,
        registry: Registry | None,
        *,
        capacity: int = 8,
        candidates: CandidateList | None = None,
        metrics: ServiceMetrics | None = None,
        resolve_ttl_s: float = 30.0,
        base_model_fallback: bool = False,
    ) -> None:
        self.diagnoser = diagnoser
        self.registry = registry
        self.capacity = capacity
        self.default = candidates
        self.metrics = metrics
        self.resolve_ttl_s = resolve_ttl_s
        self._held: OrderedDict[str, CandidateList | None] = OrderedDict()
        self._resolved: dict[tuple[str, str | None], tuple[ResolvedChainLike, float]] = {}
        self._generation: int | None = None
        self.base_model_fallback = base_model_fallback
        self.unavailable: str | None = None  # why the registry cannot be read, if it cannot

    def refresh(self) -> None:
        """Check the registry is readable (else every chain is refused until it is again) and
        forget resolved chains if it changed. Called once per batch; never raises."""
        if self.registry is None:
            return
        self.unavailable = registry_problem(self.registry)
        if self.unavailable is not None:
            self._resolved.clear()
            return
        try:
            gen = self.registry.generation()
        except (ModelError, OSError) as e:
            log.warning("adapter registry unreadable: %s", (str(e).splitlines() or ["?"])[0])
            self.unavailable = "the adapter registry is unreadable (database error)"
            self._resolved.clear()
            return
        if gen != self._generation:
            if self._generation is not None:
                log.info("adapter registry changed (generation %s -> %s)", self._generation, gen)
            self._resolved.clear()
            self._generation = gen

    def chain_for(
        self, institution: str, region: str | None, pinned: str | None = None
    ) -> ChainAnswer:
        """The chain answering ``institution`` (optionally pinned to adapter ``pinned``), its
        answering adapter held and ready. Raises :class:`AdapterNotFound`,
        :class:`AdapterForbidden`, :class:`NoCandidates`, and (unless ``base_model_fallback``)
        :class:`RegistryUnavailable` or :class:`NoVerifiedAdapter`."""
        if self.registry is None:
            return ChainAnswer((), (), self._candidates_for(None))
        if self.unavailable is not None:
            if not self.base_model_fallback:
                raise RegistryUnavailable(self.unavailable)
            return ChainAnswer((), (self.unavailable,), self._candidates_for(None))
        resolved = self._resolve(institution, region)
        if pinned is not None:
            entries, fallbacks = self._pinned_chain(pinned, institution, region)
        else:
            entries, fallbacks = list(resolved.entries), list(resolved.fallbacks)
        while entries:
            entry = entries[-1]
            try:
                candidates = self._hold(entry)
                break
            except ModelError as e:
                reason = (str(e).splitlines() or ["failed to load"])[0]
                log.warning("adapter %s skipped for its parent: %s", entry.adapter_id, reason)
                fallbacks.append(f"{entry.adapter_id}: {reason}")
                if self.metrics:
                    self.metrics.fallbacks.inc()
                entries.pop()
        else:
            candidates = None
            if not self.base_model_fallback:
                raise NoVerifiedAdapter(_no_adapter_reason(fallbacks))
        if self.metrics:
            self.metrics.adapters_held.set(len(self._held))
        chain = tuple(entries)
        return ChainAnswer(
            chain,
            tuple(fallbacks),
            self._candidates_for(candidates, chain),
            tuple(getattr(resolved, "unknown", ())),
            getattr(resolved, "case_index", None),
        )

    def ensure_held(self, answer: ChainAnswer) -> None:
        """Hold ``answer``'s answering adapter again if it was evicted since it was resolved
        (a batch with more groups than the cache holds). Raises :class:`ModelError`."""
        entry = answer.answering
        if entry is not None and entry.adapter_id not in self._held:
            self._hold(entry)

    def describe(
        self, institution: str, region: str | None
    ) -> tuple[list[RegistryEntry], list[str], CandidateList | None]:
        """The chain the registry resolves for ``institution`` (without loading it), its
        fallbacks, and the candidates its answering adapter would rank."""
        if self.registry is None:
            return [], [], self.default
        resolved = self._resolve(institution, region)
        entries = list(resolved.entries)
        candidates = self.default
        if entries:
            from feddx.model.adapter import read_adapter_info

            try:
                own = adapter_candidates(read_adapter_info(entries[-1].path).metadata)
            except ModelError:
                own = None
            candidates = own or candidates
        return entries, list(resolved.fallbacks), candidates

    def known_and_index(self, institution: str, region: str | None) -> tuple[bool, str | None]:
        """Whether the registry knows ``institution`` (an adapter or a case index of its own)
        and the id of the case index it resolves for it (``None``: none)."""
        if self.registry is None:  # no registry: nothing to be unknown to
            return True, None
        resolved = self._resolve(institution, region)
        unknown = tuple(getattr(resolved, "unknown", ()))
        index = getattr(resolved, "case_index", None)
        known = not any(u.startswith("institution ") for u in unknown)
        return known, index.adapter_id if index is not None else None

    def entries_for(self, institution: str, region: str | None) -> list[RegistryEntry]:
        """Every registry entry ``institution`` may be answered by (for ``/v1/models``)."""
        if self.registry is None:
            return []
        found = list(self.registry.entries(level="global"))
        if region is not None:
            found += self.registry.entries(level="regional", region=region)
        found += self.registry.entries(level="institutional", institution=institution)
        return [e for e in found if may_use(e, institution, region)]

    # ------------------------------------------------------------------ internals
    def _resolve(self, institution: str, region: str | None) -> ResolvedChainLike:
        assert self.registry is not None
        key = (institution, region)
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached is not None and now - cached[1] < self.resolve_ttl_s:
            return cached[0]
        resolved = self.registry.resolve(
            institution=institution,
            region=region,
            base_fingerprint=self.diagnoser.base_fingerprint,
        )
        self._resolved[key] = (resolved, now)
        return resolved

    def _pinned_chain(
        self, pinned: str, institution: str, region: str | None
    ) -> tuple[list[RegistryEntry], list[str]]:
        assert self.registry is not None
        try:
            entry = self.registry.get(pinned)
        except ModelError:
            raise AdapterNotFound("the pinned adapter is not in the registry") from None
        if not may_use(entry, institution, region):
            raise AdapterForbidden("the pinned adapter belongs to another institution or region")
        if entry.base_fingerprint != self.diagnoser.base_fingerprint:
            raise AdapterNotFound("the pinned adapter was trained for another base model")
        chain = [entry]
        while chain[0].parent_id is not None and len(chain) < 16:
            try:
                chain.insert(0, self.registry.get(chain[0].parent_id))
            except ModelError:
                break
        return chain, []

    def _hold(self, entry: RegistryEntry) -> CandidateList | None:
        """Hold ``entry`` in the Diagnoser (verified first), most recently used; its candidate
        list. Raises :class:`ModelError` if it cannot be held."""
        name = entry.adapter_id
        if name in self._held:
            self._held.move_to_end(name)
            if self.metrics:
                self.metrics.adapter_cache.labels("hit").inc()
            return self._held[name]
        assert self.registry is not None
        verified = self.registry.verify(name)
        held = self.diagnoser.add_adapter(verified.path, name=name)
        metadata = held.info.metadata if held.info is not None else {}
        candidates = adapter_candidates(metadata)
        self._held[name] = candidates
        if self.metrics:
            self.metrics.adapter_cache.labels("miss").inc()
        while len(self._held) > self.capacity:
            old, _ = self._held.popitem(last=False)
            self.diagnoser.remove_adapter(old)
            if self.metrics:
                self.metrics.adapter_cache.labels("evict").inc()
        log.info("adapter %s loaded (%d held)", name, len(self._held))
        return candidates

    def _candidates_for(
        self, own: CandidateList | None, chain: tuple[RegistryEntry, ...] = ()
    ) -> CandidateList:
        who = chain[-1].adapter_id if chain else "the base model"
        if own is not None:
            if self.default is not None:
                check_candidates(who, own.names, self.default.names, "service's")
            return own
        if self.default is not None:
            return self.default
        raise NoCandidates(
            f"{who} records no candidate list and the service has none (set 'candidates')"
        )


def _no_adapter_reason(fallbacks: Sequence[str]) -> str:
    """One line: no adapter of the chain verifies, and the first reasons why."""
    if not fallbacks:
        return "no adapter is registered for this institution, its region or globally"
    shown = "; ".join(fallbacks[:3]) + (" ..." if len(fallbacks) > 3 else "")
    return f"no adapter of this institution's chain verifies ({shown})"
