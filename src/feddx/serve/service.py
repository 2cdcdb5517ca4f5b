"""The service's long-lived parts in one object: settings, identities, audit log, rate limits,
metrics, histories, and the scorer (loaded in the background so ``/healthz`` answers at once and
``/readyz`` turns ready when the model is in memory).

Routes receive it through ``Depends`` and call its methods; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError, ModelError
from feddx.serve.adapters import (
    AdapterPool,
    Registry,
    default_candidates,
    open_registry,
    registry_problem,
)
from feddx.serve.audit import AuditLog
from feddx.serve.batching import MicroBatcher, ScoreJob, ScoreResult, SerialScheduler
from feddx.serve.history import HistoryStore, history_key_from_env, merge_history
from feddx.serve.metrics import ServiceMetrics
from feddx.serve.security import Identity, KeyStore, RateLimiter
from feddx.serve.settings import ServeSettings
from feddx.serve.store import Limiter, RedisState

if TYPE_CHECKING:
    from feddx.model.predict import Diagnoser
    from feddx.personalize.case_index import SimilarCase, StoredCaseIndex
    from feddx.personalize.embedding import Embedder

log = logging.getLogger(__name__)
T = TypeVar("T")


class NotReady(Exception):
    """The model is still loading, or failed to (HTTP 503)."""


_CASE_INDEXES_HELD = 16


@dataclass(frozen=True)
class PreparedCase:
    case: Case
    history_used: bool
    patient_ref: str | None


@dataclass(frozen=True)
class IndividualUse:
    """What the individual level added to one answer: the case's history items by kind
    (whether stored history was merged), the case index applied, the similar past cases the
    retrieval prior drew on and its weight."""

    history: dict[str, int]
    history_stored: bool
    case_index: str | None = None
    similar: tuple[SimilarCase, ...] = ()
    prior_weight: float = 0.0

    @property
    def history_items(self) -> int:
        return sum(self.history.values())

    def audit(self) -> dict[str, Any]:
        """The audit log's record of it: counts and the index id, never content."""
        return {
            "history_items": self.history_items,
            "history_stored": self.history_stored,
            "case_index": self.case_index,
            "similar_cases": len(self.similar),
            "prior_weight": self.prior_weight,
        }


def history_counts(case: Case) -> dict[str, int]:
    """The case's history items by kind (what the prompt renderer is given)."""
    h = case.history
    return {
        "conditions": len(h.prior_conditions),
        "medications": len(h.medications),
        "encounters": len(h.encounters),
    }


class DiagnosisService:
    """Everything a request needs (see the module docstring).

    ``diagnoser`` and ``registry`` may be given (tests, the benchmark); otherwise
    :meth:`start` loads ``settings.model`` and opens ``settings.registry`` in a thread.
    """

    def __init__(
        self,
        settings: ServeSettings,
        *,
        diagnoser: Diagnoser | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.keys = KeyStore(settings.keys_file)
        if settings.public_url is None and self.keys.ehr_issuers():
            raise ConfigError(
                f"{settings.keys_file} registers EHR issuers but public_url is not set: set it "
                "to the URL the EHR calls (JWTs' aud is checked against it)"
            )
        key = os.environ.get("FEDDX_AUDIT_KEY")
        self.audit = AuditLog(settings.audit_log, patient_key=key.encode() if key else None)
        self.shared: RedisState | None = None
        self.limiter: Limiter
        self.auth_limiter: Limiter
        if settings.shared_store:
            self.shared = RedisState(settings.shared_store)
            self.keys.replay = self.shared
            self.limiter = self.shared.limiter(
                "rate", settings.rate_per_minute, settings.rate_burst
            )
            self.auth_limiter = self.shared.limiter(
                "auth", settings.auth_failures_per_minute, settings.auth_failure_burst
            )
        else:
            self.limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst)
            self.auth_limiter = RateLimiter(
                settings.auth_failures_per_minute, settings.auth_failure_burst
            )
        self.histories = (
            HistoryStore(settings.history_dir, history_key_from_env())
            if settings.history_dir
            else None
        )
        self.candidates = default_candidates(settings.candidates)
        self.status: Literal["loading", "ok", "failed"] = "loading"
        self.error: str | None = None
        self.model_name = settings.model
        self.base_fingerprint = ""
        self.scheduler: MicroBatcher | None = None
        self._diagnoser = diagnoser
        self._registry = registry
        self._loader: threading.Thread | None = None
        # The embedder case indexes are queried with (loaded on first use; tests set it) and
        # the case indexes loaded so far (ids are never reused, so an id means one index).
        self.embedder: Embedder | None = None
        self._case_indexes: OrderedDict[str, StoredCaseIndex] = OrderedDict()
        self._individual_lock = threading.Lock()
        # CDS Hooks cards issued (uuid -> institution), so feedback can be matched to them.
        self.cds_cards: OrderedDict[str, str] = OrderedDict()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Make the scorer ready: at once with a given Diagnoser, else in a loading thread."""
        if self._diagnoser is not None:
            self._ready(self._diagnoser)
            return
        self._loader = threading.Thread(target=self._load, name="feddx-model-load", daemon=True)
        self._loader.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.status == "ok"

    def _load(self) -> None:
        from feddx.model.hardware import resolve_hardware
        from feddx.model.predict import Diagnoser

        try:
            hardware = resolve_hardware(self.settings.hardware_spec())
            diagnoser = Diagnoser.load(self.settings.model, hardware=hardware)
            self._ready(diagnoser)
        except Exception as e:  # reported by /readyz and the log; the process stays up
            self.status = "failed"
            self.error = (str(e).splitlines() or [type(e).__name__])[0]
            log.error("model %s failed to load: %s", self.settings.model, self.error)

    def _ready(self, diagnoser: Diagnoser) -> None:
        diagnoser.prefix_cache = self.settings.prefix_cache
        if self.settings.int8:
            diagnoser.quantize_int8()
        registry = self._registry
        if registry is None:
            registry = self._registry = open_registry(self.settings.registry)
        if not registry.entries():
            log.warning(
                "adapter registry %s holds no adapters: every request is %s",
                self.settings.registry,
                "answered by the base model alone"
                if self.settings.base_model_fallback
                else "refused (503) until one is registered",
            )
        pool = AdapterPool(
            diagnoser,
            registry,
            capacity=self.settings.adapter_cache,
            candidates=self.candidates,
            metrics=self.metrics,
            base_model_fallback=self.settings.base_model_fallback,
        )
        if self.settings.scheduler == "serial":
            self.scheduler = SerialScheduler(
                pool, max_queue=self.settings.max_queue, metrics=self.metrics
            )
        else:
            self.scheduler = MicroBatcher(
                pool,
                window_ms=self.settings.batch_window_ms,
                max_batch_cases=self.settings.max_batch_cases,
                max_queue=self.settings.max_queue,
                metrics=self.metrics,
            )
        self.model_name = diagnoser.model_name or self.settings.model
        self.base_fingerprint = diagnoser.base_fingerprint
        self.status = "ok"
        self.metrics.ready.set(1)
        log.info("ready: model %s, scheduler %s", self.model_name, self.settings.scheduler)

    def readiness(self) -> tuple[str, str | None]:
        """``("ok", None)`` when requests can be answered; else the status and why: the model
        is loading or failed, or the registry is unreadable (unless ``base_model_fallback``)."""
        if self.status != "ok":
            return self.status, self.error
        problem = registry_problem(self._registry)
        if problem is not None and not self.settings.base_model_fallback:
            return "unavailable", problem
        if self.shared is not None and (problem := self.shared.problem()) is not None:
            return "unavailable", problem
        return "ok", None

    def remember_card(self, uuid: str, institution: str, limit: int = 10_000) -> None:
        self.cds_cards[uuid] = institution
        while len(self.cds_cards) > limit:
            self.cds_cards.popitem(last=False)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.audit.close()

    # ------------------------------------------------------------------ work
    def _scheduler(self) -> MicroBatcher:
        if self.scheduler is None or self.status != "ok":
            raise NotReady(self.error or "the model is still loading")
        return self.scheduler

    def prepare(self, identity: Identity, case: Case, patient_id: str | None) -> PreparedCase:
        """``case`` as the caller's: its institution and region from the credentials, no
        label, and the stored history of ``patient_id`` (this institution's only) merged in."""
        update: dict[str, Any] = {
            "institution": identity.institution,
            "region": identity.region,
            "label": None,
        }
        if patient_id is not None and case.patient_id is None:
            # Never rendered; keeps the patient's own past stays out of its "similar cases".
            update["patient_id"] = patient_id
        case = case.model_copy(update=update)
        used = False
        ref = None
        if patient_id is not None:
            ref = self.audit.patient_ref(identity.institution, patient_id)
            stored = (
                self.histories.get(identity.institution, patient_id) if self.histories else None
            )
            if stored is not None and not stored.is_empty():
                case, used = merge_history(case, stored), True
        return PreparedCase(case, used, ref)

    async def score(
        self,
        identity: Identity,
        case: Case,
        pinned: str | None,
        candidates: Sequence[str] | None = None,
        *,
        max_prompt_tokens: int | None = None,
    ) -> ScoreResult:
        """Score ``case`` for ``identity`` through the scheduler (``candidates``: the list
        the caller expects, checked against the answering adapter's; ``max_prompt_tokens``: a
        cap on the prompt below the adapter's own budget, the CDS hook's setting). Raises
        :class:`NotReady`, :class:`~feddx.serve.batching.Overloaded`, :class:`TimeoutError` and
        whatever the chain resolution raises (unknown or foreign adapter, no or other
        candidates)."""
        wanted = tuple(candidates) if candidates is not None else None
        job = ScoreJob(
            identity.institution, identity.region, case, pinned, wanted, max_prompt_tokens
        )
        future = self._scheduler().submit(job)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), self.settings.request_timeout_s
            )
        except TimeoutError:
            future.cancel()
            raise

    async def individualize(
        self, prepared: PreparedCase, result: ScoreResult
    ) -> tuple[ScoreResult, IndividualUse]:
        """``result`` with the institution's case index applied (the institutional retrieval
        prior mixed in at its registered weight, :func:`feddx.personalize.case_index.
        apply_case_index`) when the registry resolved one, and what the individual level
        used. An index that fails to load or query is left out (logged, and the answer says
        no index was applied): the adapters that answer were verified without it."""
        use = IndividualUse(history_counts(prepared.case), prepared.history_used)
        entry = result.chain.case_index
        if entry is None:
            return result, use
        try:
            prediction, similar, weight = await asyncio.to_thread(
                self._apply_case_index, entry.adapter_id, prepared.case, result
            )
        except (ModelError, DataError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0]
            log.warning("case index %s not applied: %s", entry.adapter_id, why)
            return result, use
        use = replace(use, case_index=entry.adapter_id, similar=tuple(similar), prior_weight=weight)
        return replace(result, prediction=prediction), use

    def _apply_case_index(
        self, entry_id: str, case: Case, result: ScoreResult
    ) -> tuple[Any, list[SimilarCase], float]:
        from feddx.personalize.case_index import apply_case_index, load_case_index

        with self._individual_lock:
            stored = self._case_indexes.get(entry_id)
            if stored is None:
                stored = load_case_index(self._registry, entry_id)
                self._case_indexes[entry_id] = stored
                while len(self._case_indexes) > _CASE_INDEXES_HELD:
                    self._case_indexes.popitem(last=False)
            self._case_indexes.move_to_end(entry_id)
            embedder = self._embedder_for(stored.index.embedder_name)
            prediction, similar = apply_case_index(stored, case, result.prediction, embedder)
        return prediction, similar, stored.prior_weight if similar else 0.0

    def _embedder_for(self, name: str) -> Embedder:
        """The embedder named ``name`` (all-MiniLM-L6-v2, loaded once), or :class:`ModelError`
        for one this service cannot load."""
        if self.embedder is not None and self.embedder.name == name:
            return self.embedder
        from feddx.personalize.retrieval import EMBEDDING_MODEL, MiniLMEmbedder

        if name != EMBEDDING_MODEL:
            raise ModelError(f"the case index needs the embedder {name!r}, not available here")
        self.embedder = MiniLMEmbedder()
        return self.embedder

    async def on_scorer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the scoring thread (it may touch the Diagnoser and the registry)."""
        future = self._scheduler().call(fn)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
