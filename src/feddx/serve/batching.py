"""The scoring thread: requests queue up, are grouped by adapter chain and scored together.

One thread owns the :class:`~feddx.model.predict.Diagnoser` (it swaps LoRA tensors in place and
is not thread-safe) and the registry handle. The event loop only enqueues and awaits futures.

:class:`MicroBatcher` takes the first waiting case, collects whatever else is queued (and what
arrives within ``window_ms``, up to ``max_batch_cases``), resolves each case's chain, groups the
cases by answering adapter and candidate list, and scores each group in one
``Diagnoser.diagnose`` call with ``batch_size=max_batch_cases``: one adapter swap per group, the
group's prompts in one padded forward pass over one candidate trie (and, with the service's
``prefix_cache``, after the adapter's cached preamble), and no per-request thread hand-off. While a batch is scored the next one queues, so under load batches
grow by themselves and at one client the added latency is the window.

:class:`SerialScheduler` is the naive baseline the benchmark compares against: one request at a
time, each resolved and scored on its own (what an endpoint running the scorer under a lock
does).

Other work that must run where the Diagnoser and registry live (``/v1/models``) is submitted
with :meth:`MicroBatcher.call` and runs between batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from feddx.data.schema import Case
from feddx.errors import FeddxError
from feddx.serve.adapters import check_candidates

if TYPE_CHECKING:
    from feddx.model.predict import Prediction
    from feddx.serve.adapters import AdapterPool, ChainAnswer
    from feddx.serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Overloaded(FeddxError):
    """The queue is full (HTTP 503 with Retry-After)."""


@dataclass
class ScoreJob:
    """One case to score for one caller."""

    institution: str
    region: str | None
    case: Case
    pinned: str | None = None
    candidates: tuple[str, ...] | None = None  # the request's list, checked against the adapter's
    max_prompt_tokens: int | None = None  # a cap below the adapter's own prompt budget
    future: Future[ScoreResult] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class ScoreResult:
    prediction: Prediction
    chain: ChainAnswer
    queue_ms: float
    scoring_ms: float
    batch_cases: int


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


class MicroBatcher:
    """Micro-batched scoring in one thread (see the module docstring)."""

    def __init__(
        self,
        pool: AdapterPool,
        *,
        window_ms: float = 2.0,
        max_batch_cases: int = 16,
        max_queue: int = 256,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.window_s = window_ms / 1000.0
        self.max_batch_cases = max_batch_cases
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="feddx-scorer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side
    def submit(self, job: ScoreJob) -> Future[ScoreResult]:
        """Queue ``job``; raises :class:`Overloaded` if ``max_queue`` cases already wait."""
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.max_queue} cases are already waiting for the scorer")
        self._queue.put(job)
        if self.metrics:
            self.metrics.queue_depth.set(self._queue.qsize())
        return job.future

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the scoring thread (between batches); its result as a future."""
        item = _Call(fn)
        self._queue.put(item)
        return item.future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after the queued work (waits up to ``timeout`` seconds)."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ scoring thread
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            batch: list[ScoreJob] = [item]
            stop = self._gather(batch)
            self._score_batch(batch)
            if self.metrics:
                self.metrics.queue_depth.set(self._queue.qsize())
            if stop:
                return

    def _gather(self, batch: list[ScoreJob]) -> bool:
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch_cases:
            remaining = deadline - time.perf_counter()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            if isinstance(item, _Call):
                self._run_call(item)
            else:
                batch.append(item)
        return False

    @staticmethod
    def _run_call(item: _Call) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            item.future.set_result(item.fn())
        except BaseException as e:  # handed to the awaiting request, not raised here
            item.future.set_exception(e)

    def _score_batch(self, batch: list[ScoreJob]) -> None:
        jobs = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        self.pool.refresh()  # an unreadable registry makes chain_for refuse (fail closed)
        groups: dict[tuple[Any, ...], list[tuple[ScoreJob, ChainAnswer]]] = {}
        for job in jobs:
            try:
                answer = self.pool.chain_for(job.institution, job.region, job.pinned)
                if job.candidates is not None:
                    who = answer.adapter_name or "the base model"
                    check_candidates(
                        who, answer.candidates.names, job.candidates, "request's", quote=False
                    )
            except Exception as e:
                job.future.set_exception(e)
                continue
            key = (answer.adapter_name, tuple(answer.candidates.names), job.max_prompt_tokens)
            groups.setdefault(key, []).append((job, answer))
        if self.metrics:
            self.metrics.batch_cases.observe(len(jobs))
            self.metrics.batch_groups.observe(len(groups))
        for items in groups.values():
            self._score_group(items, len(jobs))

    def _score_group(self, items: list[tuple[ScoreJob, ChainAnswer]], batch_cases: int) -> None:
        answer = items[0][1]
        cap = items[0][0].max_prompt_tokens
        start = time.perf_counter()
        try:
            self.pool.ensure_held(answer)  # an earlier group of this batch may have evicted it
            diagnoser = self.pool.diagnoser
            budget = None  # the adapter's own
            if cap is not None:
                budget = min(cap, diagnoser.settings(answer.adapter_name)[1])
            preds = diagnoser.diagnose(
                [job.case for job, _ in items],
                answer.candidates.names,
                adapter=answer.adapter_name,
                icd10=answer.candidates.icd10,
                batch_size=self.max_batch_cases,
                max_prompt_tokens=budget,
            )
        except Exception as e:
            if len(items) == 1:
                items[0][0].future.set_exception(e)
                return
            # The exception's type only: its message could quote a case.
            log.warning(
                "a batch of %d failed (%s); scoring its cases one by one",
                len(items),
                type(e).__name__,
            )
            for item in items:
                self._score_group([item], batch_cases)
            return
        seconds = time.perf_counter() - start
        if self.metrics:
            self.metrics.scoring.observe(seconds)
            self.metrics.queue.observe(max(0.0, start - min(j.enqueued for j, _ in items)))
            level = answer.answering.level if answer.answering else "base"
            self.metrics.answered_by.labels(level).inc(len(items))
        for (job, chain), pred in zip(items, preds, strict=True):
            job.future.set_result(
                ScoreResult(
                    prediction=pred,
                    chain=chain,
                    queue_ms=(start - job.enqueued) * 1000,
                    scoring_ms=pred.latency_ms,
                    batch_cases=batch_cases,
                )
            )


class SerialScheduler(MicroBatcher):
    """The naive baseline: one request at a time, no grouping, no waiting for company."""

    def __init__(
        self,
        pool: AdapterPool,
        *,
        max_queue: int = 256,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        super().__init__(
            pool, window_ms=0.0, max_batch_cases=1, max_queue=max_queue, metrics=metrics
        )
