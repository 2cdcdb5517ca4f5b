"""Prometheus metrics, for operator keys only (counts by route and institution-free labels)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from feddx.serve.deps import Operator, Service

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(service: Service, _operator: Operator) -> Response:
    """Request counts, latency histograms, batch sizes, adapter cache hits, queue depth."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
