"""Where rate limits and the JWT replay cache live: in this process (the default, one replica)
or in Redis, shared by every replica (``shared_store: redis://host:6379/0``).

With several replicas behind one Service, state held per process is wrong twice over: a
``jti`` used at one replica is accepted again at another (a replayed JWT), and each replica
grants the full rate, so N replicas allow N times the limit. Redis is what Kubernetes users
already run for such state; the two operations it needs are atomic there:

- **token bucket**: one Lua script reads, refills and takes a token in one step, on Redis's own
  clock (``TIME``), so replicas with skewed clocks agree;
- **first use**: ``SET key 1 NX PX ttl`` succeeds for the first caller only, and the key expires
  with the JWT.

Keys hold no caller text: a bucket is named by the credential's subject (``key:<id>``,
``ehr:<issuer>``) or ``failed-auth:<address>``, a jti by a SHA-256 of issuer and jti. A store
that cannot be reached raises :class:`StoreUnavailable` (HTTP 503): a replica that cannot check
replay refuses rather than accepts.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol

from feddx.errors import FeddxError
from feddx.serve.security import LocalReplayCache, RateLimiter, ReplayCache

__all__ = ["Limiter", "LocalReplayCache", "RedisState", "ReplayCache", "StoreUnavailable"]

_PREFIX = "feddx:"
# KEYS[1] bucket; ARGV rate per second, burst, take (1) or peek (0). Returns the wait in seconds.
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  if ARGV[3] == '1' then tokens = tokens - 1 end
else
  wait = (1 - tokens) / rate
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
end
return tostring(wait)
"""


class StoreUnavailable(FeddxError):
    """The shared store (Redis) cannot be reached (HTTP 503)."""


class Limiter(Protocol):
    """A token bucket per key: :meth:`acquire` takes a token (0: allowed, else the seconds
    to wait), :meth:`wait` says the same without taking one."""

    def acquire(self, key: str) -> float: ...
    def wait(self, key: str) -> float: ...


class RedisState:
    """Rate limits and the replay cache in Redis at ``url`` (``redis://host:port/db``)."""

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        import redis

        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._bucket: Any = self._client.register_script(_BUCKET)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise StoreUnavailable(
                f"the shared store is unreachable ({type(e).__name__})"
            ) from None

    def problem(self) -> str | None:
        """``None`` when Redis answers a PING, else why not (for ``/readyz``)."""
        try:
            self._call(self._client.ping)
        except StoreUnavailable as e:
            return str(e)
        return None

    def limiter(self, name: str, rate_per_minute: float, burst: int) -> RedisLimiter:
        return RedisLimiter(self, f"{_PREFIX}{name}:", rate_per_minute / 60.0, burst)

    def first_use(self, issuer: str, jti: str, until: float) -> bool:
        digest = hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()
        ttl_ms = max(1000, int((until - time.time()) * 1000))
        return bool(
            self._call(self._client.set, f"{_PREFIX}jti:{digest}", b"1", nx=True, px=ttl_ms)
        )

    def bucket(self, key: str, rate: float, burst: int, take: bool) -> float:
        out = self._call(self._bucket, keys=[key], args=[rate, burst, "1" if take else "0"])
        return float(out)


class RedisLimiter:
    """A :class:`Limiter` whose buckets live in Redis (see :class:`RedisState`)."""

    def __init__(self, state: RedisState, prefix: str, rate: float, burst: int) -> None:
        self.state, self.prefix, self.rate, self.burst = state, prefix, rate, burst

    def acquire(self, key: str) -> float:
        return self.state.bucket(self.prefix + key, self.rate, self.burst, True)

    def wait(self, key: str) -> float:
        return self.state.bucket(self.prefix + key, self.rate, self.burst, False)


def local_limiter(rate_per_minute: float, burst: int) -> Limiter:
    """The in-process :class:`Limiter` (:class:`~feddx.serve.security.RateLimiter`)."""
    return RateLimiter(rate_per_minute, burst)
