"""The outermost layer of every request: a request id, the body size limit, security headers,
metrics, and the audit line.

It is plain ASGI (no ``BaseHTTPMiddleware``) so it sees the final status of every response,
including the ones FastAPI's handlers produce, and refuses an oversized body before any of it
reaches a parser: a declared ``Content-Length`` over the limit is refused unread, a chunked body
is read up to the limit and refused there. Routes add who and what to the
:class:`RequestContext` they find in the scope; this layer writes it to the audit log once the
response has been sent, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from feddx.serve.audit import AuditEvent

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from feddx.serve.security import Identity
    from feddx.serve.service import DiagnosisService

log = logging.getLogger(__name__)

CONTEXT_KEY = "feddx.context"
# Health probes and static assets are neither audited (no caller, no data) nor rate limited.
_UNAUDITED = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
_UNAUDITED_PREFIXES = ("/static/",)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_API_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass
class RequestContext:
    """What a request did, filled in by the routes for the audit line."""

    request_id: str
    started: float
    identity: Identity | None = None
    outcome: str | None = None
    adapter_chain: tuple[str, ...] = ()
    answering: str | None = None
    fallbacks: int = 0
    cases: int = 0
    patient_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def context_of(scope: Scope) -> RequestContext:
    ctx = scope.get(CONTEXT_KEY)
    if ctx is None:  # a request that bypassed the middleware (not in the app as built)
        ctx = scope[CONTEXT_KEY] = RequestContext(secrets.token_hex(8), time.perf_counter())
    return ctx  # type: ignore[no-any-return]


class RequestContextMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, service: DiagnosisService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(secrets.token_hex(8), time.perf_counter())
        scope[CONTEXT_KEY] = ctx
        state = {"status": 500, "audited": False, "swallow": False}
        path: str = scope.get("path", "")
        is_page = path == "/" or path.startswith("/static/")

        async def send_wrapped(message: Message) -> None:
            if state["swallow"]:
                return
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["audited"] = True
                # Off the event loop: the line's fsync waits for the disk, and requests
                # finishing together share one fsync (the audit log's group commit).
                if not await asyncio.to_thread(self._audit, scope, ctx, message["status"], path):
                    # Fail closed: a request the audit log cannot record gets no answer.
                    state["swallow"] = True
                    state["status"] = 503
                    await self._send_json(send, 503, "audit log unavailable", ctx, audit=False)
                    return
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", ctx.request_id.encode()))
                headers += _API_HEADERS
                if is_page:
                    headers.append((b"content-security-policy", _PAGE_CSP))
                message = {**message, "headers": headers}
            await send(message)

        try:
            settings = self.service.settings
            limit = (
                settings.cds_max_body_bytes
                if path.startswith("/cds-services/")
                else settings.max_body_bytes
            )
            if scope.get("method") in _BODY_METHODS:
                body = await self._read_body(scope, receive, limit)
                if body is None:
                    ctx.outcome = "refused: body too large"
                    await self._send_json(
                        send_wrapped, 413, f"request body exceeds {limit} bytes", ctx
                    )
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapped)
        except Exception as exc:
            # Handled here, not re-raised: the server's own handler would log the exception's
            # message, which can quote request data. The log gets its type and frames only.
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error(
                "internal error %s in request %s\n%s", type(exc).__name__, ctx.request_id, frames
            )
            ctx.outcome = f"error: {type(exc).__name__}"
            if not state["audited"]:
                await self._send_json(send_wrapped, 500, "internal error", ctx)
        finally:
            if not state["audited"]:  # no response was started (client gone, crash)
                await asyncio.to_thread(self._audit, scope, ctx, int(state["status"]), path)
            self._observe(scope, ctx, int(state["status"]))

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or ``None`` as soon as it exceeds ``limit`` bytes."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return None
                except ValueError:
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _send_json(
        send: Send, status: int, detail: str, ctx: RequestContext, *, audit: bool = True
    ) -> None:
        body = json.dumps({"detail": detail, "request_id": ctx.request_id}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if not audit:
            headers.append((b"x-request-id", ctx.request_id.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, ctx: RequestContext, status: int) -> None:
        route = _route(scope)
        metrics = self.service.metrics
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - ctx.started)

    def _audit(self, scope: Scope, ctx: RequestContext, status: int, path: str) -> bool:
        """Write the request's audit line; ``False`` if it could not be written."""
        if path in _UNAUDITED or path.startswith(_UNAUDITED_PREFIXES):
            return True
        outcome = ctx.outcome or ("ok" if status < 400 else f"refused: {status}")
        if status >= 500 and ctx.outcome is None:
            outcome = f"error: {status}"
        who = ctx.identity
        event = AuditEvent(
            request_id=ctx.request_id,
            method=str(scope.get("method", "")),
            route=_route(scope),
            status=status,
            outcome=outcome,
            latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
            subject=who.subject if who else None,
            institution=who.institution if who else None,
            adapter_chain=ctx.adapter_chain,
            answering=ctx.answering,
            fallbacks=ctx.fallbacks,
            cases=ctx.cases,
            patient_ref=ctx.patient_ref,
            detail=ctx.detail,
        )
        try:
            self.service.audit.record(event)
        except OSError as e:
            log.error("audit log write failed (%s): request %s", e.strerror, ctx.request_id)
            return False
        return True


def _route(scope: Scope) -> str:
    """The matched route's template (``/v1/patients/{patient_id}/history``), never the raw
    path, which can hold a patient id."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
