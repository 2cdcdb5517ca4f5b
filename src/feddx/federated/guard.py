"""A validation filter in front of any Flower strategy's ``aggregate_train``.

Flower's strategies trust their replies: one NaN, one tensor of the wrong shape or one wildly
scaled update (a bug, a corrupted transfer, a poisoned client) ends up in the global adapter,
or makes ``aggregate_train`` raise and the round fail. :class:`GuardedStrategy` wraps a strategy
and, before delegating, for every reply of a round:

1. drops error replies (a client that crashed), counts them and records the failure class
   each states (:func:`feddx.federated.failures.failure_class_of`: only the exact fixed texts
   of the failure table are recognised, so no client-supplied text is ever logged or stored);
2. decodes compressed updates back into full adapters (:func:`feddx.federated.codec.decode_update`)
   against the global adapter the round started from;
3. rejects replies with missing/extra tensors, wrong shapes, non-finite values, a missing or
   invalid ``num-examples``, or an update norm above ``max_update_norm`` or above
   ``outlier_factor`` times the round's median update norm (the absolute limit works with any
   number of replies, the relative one needs 3; under central DP the strategy factory turns
   both off, see :func:`feddx.federated.strategies.guard_limits`);
4. aggregates only if at least ``min_replies`` replies survive, else keeps the global adapter.

Clients that never answered (dropped out, timed out) simply have no reply: the round goes on
with those that did. Every rejection is logged and reported with the node id and a reason made
of tensor names, counts and norms only; no content of an update is ever logged.

Accepted replies are handed to the inner strategy sorted by a hash of their content, so the
aggregate does not depend on the order in which replies happened to arrive (float sums are
order-sensitive); together with per-round seeds this makes a run, and a resumed run, exactly
reproducible.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from feddx.federated.codec import (
    ARRAYS_KEY,
    CODEC_KEY,
    METRICS_KEY,
    MalformedUpdate,
    NDArrays,
    decode_update,
    from_array_record,
    to_array_record,
)
from feddx.federated.failures import failure_class_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """A reply left out of aggregation, and why (names and numbers only)."""

    node_id: int
    reason: str


@dataclass(frozen=True)
class Failure:
    """An error reply: the node, Flower's error code and the failure class its reason states
    (``"unrecognised"`` for anything but the exact texts of the failure table)."""

    node_id: int
    code: int
    kind: str


@dataclass
class RoundOutcome:
    """What :meth:`GuardedStrategy.aggregate_train` saw and did in one round."""

    server_round: int
    replies: int = 0
    failed: int = 0  # error replies (the client raised)
    failures: list[Failure] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    accepted: int = 0
    aggregated: bool = False
    update_norms: list[float] = field(default_factory=list)  # of accepted replies
    accepted_nodes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "replies": self.replies,
            "failed": self.failed,
            "failures": [
                {"node": f.node_id, "code": f.code, "class": f.kind} for f in self.failures
            ],
            "rejected": [{"node": r.node_id, "reason": r.reason} for r in self.rejected],
            "accepted": self.accepted,
            "aggregated": self.aggregated,
            "update_norms": self.update_norms,
        }


class GuardedStrategy(Strategy):  # type: ignore[misc]  # flwr is untyped for mypy
    """Validate, decode and order replies, then let ``inner`` aggregate them.

    Parameters
    ----------
    inner
        Any Flower message-API strategy (possibly itself a DP wrapper).
    min_replies
        Fewest valid replies a round needs to change the global adapter.
    max_update_norm
        Reject an update whose L2 norm (over all tensors, relative to the global adapter)
        exceeds this; ``0`` disables the absolute limit.
    outlier_factor
        Reject an update whose norm exceeds this multiple of the median norm of the round's
        valid updates (applied with 3+ valid updates); ``0`` disables it.
    weight_key
        The metric every reply must carry as a positive aggregation weight.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        min_replies: int = 1,
        max_update_norm: float = 0.0,
        outlier_factor: float = 0.0,
        weight_key: str = "num-examples",
    ) -> None:
        self.inner = inner
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.outlier_factor = outlier_factor
        self.weight_key = weight_key
        self.reference: NDArrays | None = None
        self.last_outcome: RoundOutcome | None = None

    # ------------------------------------------------------------- delegation
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.reference = from_array_record(arrays)
        return cast(
            Iterable[Message], self.inner.configure_train(server_round, arrays, config, grid)
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return cast(
            Iterable[Message], self.inner.configure_evaluate(server_round, arrays, config, grid)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(
            server_round, [m for m in replies if not m.has_error()]
        )

    def summary(self) -> None:
        self.inner.summary()

    # ------------------------------------------------------------- the filter
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.reference is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        outcome = RoundOutcome(server_round)
        self.last_outcome = outcome
        accepted: list[tuple[Message, NDArrays, MetricRecord, float]] = []
        for msg in replies:
            outcome.replies += 1
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                outcome.failed += 1
                # The reason is client-supplied text: only a recognised fixed class is kept.
                kind = failure_class_of(msg.error.reason)
                outcome.failures.append(Failure(node, int(msg.error.code), kind))
                log.warning(
                    "round %d: node %d failed (error code %d, class %s)",
                    server_round,
                    node,
                    msg.error.code,
                    kind,
                )
                continue
            try:
                arrays, metrics, norm = self._check(msg.content)
            except MalformedUpdate as e:
                self._reject(outcome, node, str(e))
                continue
            accepted.append((msg, arrays, metrics, norm))

        if self.outlier_factor > 0 and len(accepted) >= 3:
            median = float(np.median([a[3] for a in accepted]))
            limit = self.outlier_factor * max(median, 1e-12)
            kept = []
            for item in accepted:
                if item[3] > limit:
                    self._reject(
                        outcome,
                        int(item[0].metadata.src_node_id),
                        f"update norm {item[3]:.4g} > {self.outlier_factor:g} x median {median:.4g}",
                    )
                else:
                    kept.append(item)
            accepted = kept

        outcome.accepted = len(accepted)
        if len(accepted) < self.min_replies:
            log.warning(
                "round %d: %d valid replies < minimum %d; global adapter unchanged",
                server_round,
                len(accepted),
                self.min_replies,
            )
            return None, None

        accepted.sort(key=lambda item: _digest(item[1], item[2]))
        outcome.update_norms = [item[3] for item in accepted]
        outcome.accepted_nodes = [int(item[0].metadata.src_node_id) for item in accepted]
        cleaned = []
        for msg, arrays, metrics, _ in accepted:
            content = RecordDict({ARRAYS_KEY: to_array_record(arrays), METRICS_KEY: metrics})
            cleaned.append(Message(content=content, metadata=msg.metadata))
        result: tuple[ArrayRecord | None, MetricRecord | None] = self.inner.aggregate_train(
            server_round, cleaned
        )
        outcome.aggregated = result[0] is not None
        return result

    def _reject(self, outcome: RoundOutcome, node: int, reason: str) -> None:
        outcome.rejected.append(Rejection(node, reason))
        log.warning(
            "round %d: rejected update from node %d: %s", outcome.server_round, node, reason
        )

    def _check(self, content: RecordDict) -> tuple[NDArrays, MetricRecord, float]:
        assert self.reference is not None
        if len(content.array_records) != 1 or ARRAYS_KEY not in content.array_records:
            raise MalformedUpdate(f"expected one ArrayRecord named '{ARRAYS_KEY}'")
        if len(content.metric_records) != 1:
            raise MalformedUpdate("expected exactly one MetricRecord")
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(self.weight_key)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise MalformedUpdate(f"metric '{self.weight_key}' must be a positive number")
        for k, v in metrics.items():
            values = v if isinstance(v, list) else [v]
            if not all(math.isfinite(float(x)) for x in values):
                raise MalformedUpdate(f"metric {k!r} is not finite")
        codec = content.config_records.get(CODEC_KEY)
        arrays = decode_update(content.array_records[ARRAYS_KEY], codec, self.reference)
        bad = [k for k, a in arrays.items() if not np.all(np.isfinite(a))]
        if bad:
            raise MalformedUpdate(f"non-finite values in {len(bad)} tensors (e.g. {bad[0]!r})")
        norm = math.sqrt(
            sum(
                float(np.sum((arrays[k] - self.reference[k]).astype(np.float64) ** 2))
                for k in arrays
            )
        )
        if self.max_update_norm > 0 and norm > self.max_update_norm:
            raise MalformedUpdate(f"update norm {norm:.4g} > limit {self.max_update_norm:g}")
        return arrays, metrics, norm


def _digest(arrays: NDArrays, metrics: MetricRecord) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    h.update(repr(sorted(metrics.items())).encode())
    return h.hexdigest()
