"""The service's Prometheus metrics, in a registry of its own (one per app, so tests and
several apps in one process never collide). ``GET /metrics`` renders it.

Labels are bounded: route templates (never raw paths, which hold patient ids), status codes,
adapter levels and outcomes. Nothing per patient or per case.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Counters, histograms and gauges the middleware, scheduler and adapter pool update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "feddx_requests",
            "HTTP requests by route template and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "feddx_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "feddx_queue_seconds",
            "Time a case waited for the scorer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.scoring = Histogram(
            "feddx_batch_scoring_seconds",
            "Scoring time of one batch (one Diagnoser call).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_cases = Histogram(
            "feddx_batch_cases", "Cases per micro-batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_groups = Histogram(
            "feddx_batch_groups",
            "Adapter groups per micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.adapter_cache = Counter(
            "feddx_adapter_cache",
            "Adapter cache lookups (hit, miss) and evictions.",
            ["result"],
            registry=r,
        )
        self.fallbacks = Counter(
            "feddx_adapter_fallbacks",
            "Adapters skipped for their parent (missing, corrupt, other base model).",
            registry=r,
        )
        self.answered_by = Counter(
            "feddx_answers",
            "Cases answered, by the answering adapter's level.",
            ["level"],
            registry=r,
        )
        self.rate_limited = Counter("feddx_rate_limited", "Requests refused with 429.", registry=r)
        self.auth_failures = Counter(
            "feddx_auth_failures", "Requests refused with 401.", registry=r
        )
        self.ready = Gauge("feddx_model_ready", "1 once the base model is loaded.", registry=r)
        self.adapters_held = Gauge(
            "feddx_adapters_held", "Adapters held by the scorer.", registry=r
        )
        self.queue_depth = Gauge("feddx_queue_depth", "Cases waiting for the scorer.", registry=r)
