"""Liveness and readiness probes: no authentication, no audit line, no data."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from feddx.serve.deps import Service
from feddx.serve.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(service: Service) -> JSONResponse:
    """Liveness: the process answers. 503 only once the model has failed to load (a restart
    is the remedy), never while it is still loading."""
    if service.status == "failed":
        return JSONResponse({"status": "failed", "detail": service.error}, status_code=503)
    return JSONResponse({"status": "ok", "detail": None})


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(service: Service) -> JSONResponse:
    """Readiness: 200 once the base model is loaded and the scorer runs, 503 before, and 503
    while the adapter registry is unreadable (requests would be refused then; see the
    ``base_model_fallback`` setting)."""
    status, detail = service.readiness()
    code = 200 if status == "ok" else 503
    return JSONResponse({"status": status, "detail": detail}, status_code=code)
