"""``create_app(settings)``: the FastAPI application of the diagnosis service.

Layout (after FastAPI's full-stack template): ``settings.py`` (configuration), ``security.py``
(credentials, rate limits), ``deps.py`` (dependencies), ``schemas.py`` (bodies), ``routes/``
(one module per concern), ``service.py`` (the long-lived parts), ``batching.py`` and
``adapters.py`` (the scorer), ``audit.py``, ``history.py``, ``static/`` (the clinician page).

Errors: every error body is ``{"detail": ..., "request_id": ...}``. Validation errors (422)
list each field's location and what is wrong with it, never the submitted value (FastAPI's
default handler echoes it as ``input``); malformed JSON is 400 with its position. An
unexpected exception is a 500 that names the request id only (see
:mod:`feddx.serve.middleware`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from feddx import __version__
from feddx.data.schema import History
from feddx.serve.adapters import (
    AdapterForbidden,
    AdapterNotFound,
    CandidatesMismatch,
    NoCandidates,
    NoVerifiedAdapter,
    Registry,
    RegistryUnavailable,
)
from feddx.serve.batching import Overloaded
from feddx.serve.fhir_input import FhirInputError
from feddx.serve.middleware import RequestContextMiddleware, context_of
from feddx.serve.prefetch import PREFETCH
from feddx.serve.routes import cds_hooks, diagnose, health, metrics, models, page, patients
from feddx.serve.routes.page import STATIC_DIR
from feddx.serve.schemas import CdsFeedback, CdsRequest, DiagnoseRequest
from feddx.serve.service import DiagnosisService, NotReady
from feddx.serve.settings import ServeSettings
from feddx.serve.store import StoreUnavailable

if TYPE_CHECKING:
    from feddx.model.predict import Diagnoser

log = logging.getLogger(__name__)

DESCRIPTION = """
Ranked differential diagnoses from a personalized, federated LLM.

Authenticate with `Authorization: Bearer <key>` (an institution's API key from
`feddx serve keys add`, or for CDS Hooks the EHR's signed JWT). The caller's institution selects
its adapter chain (institution > region > global) and reaches only its own patients' histories.
Errors name the field at fault, never its value.
"""


def create_app(
    settings: ServeSettings | None = None,
    *,
    diagnoser: Diagnoser | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """The service as a FastAPI app (serve it with uvicorn; ``feddx serve`` does).

    ``diagnoser`` and ``registry`` replace loading ``settings.model`` and opening
    ``settings.registry`` (tests and the benchmark pass a prepared model). The model loads in a
    background thread when the app starts; ``/readyz`` is 503 until it is in memory.
    """
    settings = settings or ServeSettings()
    service = DiagnosisService(settings, diagnoser=diagnoser, registry=registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="feddx diagnosis service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={},
        docs_url="/docs" if settings.api_docs else None,
        redoc_url=None,
    )
    app.state.service = service
    for module in (health, diagnose, patients, models, cds_hooks, metrics, page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type", "x-api-key"],
        )
    app.add_middleware(RequestContextMiddleware, service=service)
    return app


def _body(request: Request, detail: Any) -> dict[str, Any]:
    return {"detail": detail, "request_id": context_of(request.scope).request_id}


def _field_names(*models: type[BaseModel]) -> frozenset[str]:
    """Every field name (and alias) of ``models`` and the models nested in them: the only
    strings an error's ``loc`` may show (a dict key or an unknown key is the caller's text)."""
    seen: set[type[BaseModel]] = set()
    names = {"body", "query", "path", "header", "cookie"}
    todo: list[Any] = list(models)
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t in seen:
                continue
            seen.add(t)
            for name, f in t.model_fields.items():
                names.update(n for n in (name, f.alias) if n)
                todo.append(f.annotation)
        else:
            todo.extend(get_args(t))
    return frozenset(names)


# Plus the FHIR input's own locations (feddx.serve.fhir_input) and the prefetch keys.
_LOC_NAMES = _field_names(DiagnoseRequest, History, CdsRequest, CdsFeedback) | {
    "entry",
    "resource",
    "resourceType",
    *PREFETCH,
}


def _safe_loc(loc: Any) -> list[str | int]:
    """``loc`` with every string that is not one of our field names replaced by ``"*"``."""
    return [p if isinstance(p, int) or p in _LOC_NAMES else "*" for p in loc]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        for e in errors:
            if e.get("type") == "json_invalid":
                where = e.get("loc", ())
                pos = where[-1] if where and isinstance(where[-1], int) else None
                msg = (e.get("ctx") or {}).get("error", "invalid JSON")
                at = f" at character {pos}" if pos is not None else ""
                return JSONResponse(_body(request, f"malformed JSON{at}: {msg}"), status_code=400)
        items = [
            {
                "loc": _safe_loc(e.get("loc", ())),
                "msg": str(e.get("msg", "invalid")),
                "type": str(e.get("type", "value_error")),
            }
            for e in errors
        ]
        return JSONResponse(_body(request, items), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            _body(request, exc.detail), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(FhirInputError)
    async def fhir_error(request: Request, exc: FhirInputError) -> JSONResponse:
        items = [
            {"loc": _safe_loc(loc), "msg": msg, "type": "fhir_invalid"} for loc, msg in exc.problems
        ]
        return JSONResponse(_body(request, items), status_code=422)

    simple: dict[type[Exception], tuple[int, dict[str, str] | None]] = {
        AdapterNotFound: (404, None),
        AdapterForbidden: (403, None),
        NoCandidates: (503, None),
        CandidatesMismatch: (503, None),
        NoVerifiedAdapter: (503, {"Retry-After": "30"}),
        RegistryUnavailable: (503, {"Retry-After": "30"}),
        Overloaded: (503, {"Retry-After": "1"}),
        NotReady: (503, {"Retry-After": "5"}),
        StoreUnavailable: (503, {"Retry-After": "5"}),
    }
    for exc_type, (code, headers) in simple.items():

        async def handler(
            request: Request, exc: Exception, code: int = code, headers: Any = headers
        ) -> JSONResponse:
            return JSONResponse(_body(request, str(exc)), status_code=code, headers=headers)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(TimeoutError)
    async def timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse(_body(request, "the scorer did not answer in time"), status_code=504)
