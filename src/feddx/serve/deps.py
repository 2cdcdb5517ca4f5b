"""FastAPI dependencies: the service object, and who the caller is (authenticated, rate
limited, recorded in the request's audit context)."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, NoReturn

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from feddx.serve.middleware import RequestContext, context_of
from feddx.serve.security import KEY_PREFIX, AuthError, Identity
from feddx.serve.service import DiagnosisService

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="feddx"'}
# Declares the scheme in the OpenAPI document; the credential itself is read in authenticate().
_bearer = HTTPBearer(auto_error=False, description="An API key (fdx_...) or an EHR's JWT.")


def get_service(request: Request) -> DiagnosisService:
    service: DiagnosisService = request.app.state.service
    return service


def get_context(request: Request) -> RequestContext:
    return context_of(request.scope)


Service = Annotated[DiagnosisService, Depends(get_service)]
Context = Annotated[RequestContext, Depends(get_context)]


def _credential(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _audiences(request: Request, service: DiagnosisService) -> list[str]:
    """The URLs a CDS Hooks JWT's ``aud`` may name: the endpoint called and, for a service's
    feedback endpoint, the service's own URL, both under ``public_url`` (never the request's
    ``Host``, which the caller chooses). :class:`AuthError` when ``public_url`` is unset."""
    if service.settings.public_url is None:
        raise AuthError("this service has no public_url: it cannot check a JWT's aud")
    base = service.settings.public_url.rstrip("/")
    path = request.url.path
    found = [base + path]
    if path.endswith("/feedback"):
        found.append(base + path.removesuffix("/feedback"))
    return found


async def authenticate(
    request: Request,
    service: Service,
    ctx: Context,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The caller's identity from ``Authorization: Bearer <API key or EHR JWT>`` (or
    ``X-API-Key``). 401 for missing or invalid credentials, 429 past the identity's rate (or,
    for failed sign-ins, past the client address's)."""
    token = _credential(request)
    client = request.client.host if request.client else "?"
    # A throttled address is refused before the key derivation (scrypt, ~40-70 ms of CPU),
    # so guessing at the limit costs the guesser, not the server.
    throttled = service.auth_limiter.wait(f"failed-auth:{client}")
    if throttled > 0:
        _too_many_failures(service, ctx, throttled)
    try:
        if token is None:
            raise AuthError("missing credentials: send 'Authorization: Bearer <API key>'")
        if token.startswith(f"{KEY_PREFIX}_"):
            identity = await asyncio.to_thread(service.keys.authenticate_key, token)
        else:
            s = service.settings
            identity = service.keys.authenticate_jwt(
                token,
                audiences=_audiences(request, service),
                algorithms=s.jwt_algorithms,
                leeway_s=s.jwt_leeway_s,
                max_lifetime_s=s.jwt_max_lifetime_s,
            )
    except AuthError as e:
        service.metrics.auth_failures.inc()
        wait = service.auth_limiter.acquire(f"failed-auth:{client}")
        if wait > 0:
            _too_many_failures(service, ctx, wait)
        ctx.outcome = f"refused: {e}"
        raise HTTPException(401, str(e), headers=_CHALLENGE) from None
    ctx.identity = identity
    wait = service.limiter.acquire(identity.subject)
    if wait > 0:
        service.metrics.rate_limited.inc()
        ctx.outcome = "refused: rate limit"
        raise HTTPException(
            429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))}
        )
    return identity


def _too_many_failures(service: DiagnosisService, ctx: RequestContext, wait: float) -> NoReturn:
    service.metrics.rate_limited.inc()
    ctx.outcome = "refused: too many failed sign-ins"
    raise HTTPException(
        429,
        "too many failed sign-ins from this address",
        headers={"Retry-After": str(math.ceil(wait))},
    )


Caller = Annotated[Identity, Depends(authenticate)]


def require_institution(identity: Caller) -> Identity:
    """An institution's identity (operator keys read metrics only): 403 otherwise."""
    if identity.role != "institution":
        raise HTTPException(403, "this key may read /metrics only")
    return identity


def require_operator(identity: Caller) -> Identity:
    """An operator key (``feddx serve keys add NAME --operator``): 403 otherwise."""
    if identity.role != "operator":
        raise HTTPException(403, "/metrics needs an operator key")
    return identity


Institution = Annotated[Identity, Depends(require_institution)]
Operator = Annotated[Identity, Depends(require_operator)]
