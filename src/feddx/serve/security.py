"""Who is calling: API keys stored hashed, EHR-signed CDS Hooks JWTs, and per-identity rate limits.

One identity per institution (with its region): the institution decides which adapter chain
answers and whose stored patient histories a request may reach, so it always comes from the
credentials, never from the request body.

- **API keys** look like ``fdx_<key id>_<secret>``. The keys file holds, per key, the id, the
  institution, the region and ``scrypt(secret, salt)`` with a per-key random salt; the secret
  itself is printed once by ``feddx serve keys add`` and never stored. The id selects the record
  and the derived hashes are compared in constant time. scrypt costs ~40 ms, so a key that
  verified once is remembered in memory (by its SHA-256) until the keys file changes.
- **CDS Hooks JWTs** (CDS Hooks 2.0, "Trusting CDS Clients"): the EHR signs a short-lived JWT
  with its private key; each EHR issuer is registered with its public key and the institution
  it speaks for. ``iss``, ``aud`` (the CDS service URL called), ``exp``, ``iat`` and ``jti`` are
  required, the lifetime is bounded, and a ``jti`` is accepted once. Keys are registered out of
  band: the service never fetches a ``jku`` URL (it runs without outbound network access).
- **operator keys** (``--operator``) read ``/metrics`` and nothing else.

Errors never quote the presented credential.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from feddx.errors import ConfigError, FeddxError
from feddx.io import atomic_write_json

KEY_PREFIX = "fdx"
_FORMAT = 1
# scrypt with n=2**14, r=8 uses 16 MiB and ~40 ms per derivation: negligible per key added,
# expensive enough per guess. The secrets are 256-bit random, so this is defence in depth.
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}
_VERIFIED_CACHE = 4096

Role = Literal["institution", "operator"]


class AuthError(FeddxError):
    """Missing, malformed, unknown, expired or replayed credentials (HTTP 401)."""


@dataclass(frozen=True)
class Identity:
    """An authenticated caller.

    ``subject`` names the credential (``key:<id>`` or ``ehr:<issuer>``) for the audit log;
    ``institution`` and ``region`` select adapters and histories.
    """

    institution: str
    region: str | None
    role: Role
    subject: str


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    institution: str
    region: str | None
    role: Role
    salt: bytes
    digest: bytes
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "institution": self.institution,
            "region": self.region,
            "role": self.role,
            "kdf": "scrypt",
            **_SCRYPT,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class EhrIssuer:
    """An EHR allowed to call the CDS Hooks endpoints, and the institution it speaks for."""

    issuer: str
    institution: str
    region: str | None
    public_key_pem: str
    added_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "institution": self.institution,
            "region": self.region,
            "public_key": self.public_key_pem,
            "added_at": self.added_at,
        }


def _derive(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, maxmem=64 << 20, **_SCRYPT)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise ConfigError(f"{what} must be 1-200 printable characters")
    return value


class KeyStore:
    """The identities file: API key records and EHR issuers, reloaded when it changes on disk.

    Thread-safe: the event loop authenticates while ``feddx serve keys add`` may rewrite the
    file (atomically) from another process.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, KeyRecord] = {}
        self._ehrs: dict[str, EhrIssuer] = {}
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._public_keys: dict[str, Any] = {}
        self._dummy_salt = secrets.token_bytes(16)
        # Where used jtis are remembered: this process by default; the service swaps in the
        # shared store (feddx.serve.store) when replicas must agree.
        self.replay: ReplayCache = LocalReplayCache()
        self._load_if_changed()

    # ------------------------------------------------------------------ file
    def _load_if_changed(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and (stamp is not None or not self._keys):
            return
        keys, ehrs = self._read() if stamp is not None else ({}, {})
        self._keys, self._ehrs, self._stamp = keys, ehrs, stamp
        self._verified.clear()
        self._public_keys.clear()

    def _read(self) -> tuple[dict[str, KeyRecord], dict[str, EhrIssuer]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"keys file {self.path} is unreadable or not JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise ConfigError(f"keys file {self.path}: unsupported format")
        keys: dict[str, KeyRecord] = {}
        ehrs: dict[str, EhrIssuer] = {}
        where = "keys"
        try:
            for i, k in enumerate(raw.get("keys", [])):
                where = f"keys[{i}]"
                if k.get("kdf") != "scrypt" or any(k.get(p) != v for p, v in _SCRYPT.items()):
                    raise ConfigError(f"keys file {self.path}: {where} has unknown KDF params")
                rec = KeyRecord(
                    key_id=str(k["key_id"]),
                    institution=str(k["institution"]),
                    region=None if k.get("region") is None else str(k["region"]),
                    role="operator" if k.get("role") == "operator" else "institution",
                    salt=bytes.fromhex(k["salt"]),
                    digest=bytes.fromhex(k["hash"]),
                    created_at=str(k.get("created_at", "")),
                )
                keys[rec.key_id] = rec
            for i, item in enumerate(raw.get("ehrs", [])):
                where = f"ehrs[{i}]"
                ehr = EhrIssuer(
                    issuer=str(item["issuer"]),
                    institution=str(item["institution"]),
                    region=None if item.get("region") is None else str(item["region"]),
                    public_key_pem=str(item["public_key"]),
                    added_at=str(item.get("added_at", "")),
                )
                ehrs[ehr.issuer] = ehr
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"keys file {self.path}: {where} is malformed ({type(e).__name__})"
            ) from None
        return keys, ehrs

    def _write(self) -> None:
        atomic_write_json(
            self.path,
            {
                "format": _FORMAT,
                "keys": [k.to_json() for k in self._keys.values()],
                "ehrs": [e.to_json() for e in self._ehrs.values()],
            },
        )
        os.chmod(self.path, 0o600)
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_size)

    # ------------------------------------------------------------------ administration
    def add_key(
        self, institution: str, region: str | None = None, *, role: Role = "institution"
    ) -> tuple[str, KeyRecord]:
        """Create a key for ``institution`` and store its hash; returns ``(key, record)``.
        The key is returned once and is not recoverable afterwards."""
        institution = _check_name(institution, "institution")
        region = _check_name(region, "region") if region else None
        with self._lock:
            self._load_if_changed()
            key_id = secrets.token_hex(6)
            while key_id in self._keys:
                key_id = secrets.token_hex(6)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            salt = secrets.token_bytes(16)
            rec = KeyRecord(
                key_id, institution, region, role, salt, _derive(secret, salt), _now_iso()
            )
            self._keys[key_id] = rec
            self._write()
        return f"{KEY_PREFIX}_{key_id}_{secret}", rec

    def revoke(self, key_id: str) -> None:
        """Delete key ``key_id``; :class:`ConfigError` if there is none."""
        with self._lock:
            self._load_if_changed()
            if key_id not in self._keys:
                raise ConfigError(f"no key {key_id!r} in {self.path}")
            del self._keys[key_id]
            self._verified.clear()
            self._write()

    def add_ehr(
        self, issuer: str, institution: str, region: str | None, public_key_pem: str
    ) -> EhrIssuer:
        """Register (or replace) EHR ``issuer``'s public key (PEM) for ``institution``.
        Raises :class:`ConfigError` if the key does not parse or is not an EC/RSA public key."""
        issuer = _check_name(issuer, "issuer")
        _public_key(public_key_pem, issuer)
        ehr = EhrIssuer(
            issuer,
            _check_name(institution, "institution"),
            _check_name(region, "region") if region else None,
            public_key_pem.strip() + "\n",
            _now_iso(),
        )
        with self._lock:
            self._load_if_changed()
            self._ehrs[issuer] = ehr
            self._public_keys.pop(issuer, None)
            self._write()
        return ehr

    def key_records(self) -> list[KeyRecord]:
        with self._lock:
            self._load_if_changed()
            return list(self._keys.values())

    def ehr_issuers(self) -> list[EhrIssuer]:
        with self._lock:
            self._load_if_changed()
            return list(self._ehrs.values())

    # ------------------------------------------------------------------ verification
    def authenticate_key(self, presented: str) -> Identity:
        """The identity of API key ``presented``; :class:`AuthError` if it is not a valid key."""
        fingerprint = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        with self._lock:
            self._load_if_changed()
            key_id = self._verified.get(fingerprint)
            if key_id is not None and key_id in self._keys:
                self._verified.move_to_end(fingerprint)
                return self._identity(self._keys[key_id])
            records = dict(self._keys)
        prefix, _, rest = presented.partition("_")
        key_id, _, secret = rest.partition("_")
        rec = records.get(key_id) if prefix == KEY_PREFIX else None
        # Derive even for an unknown id, so timing does not reveal which ids exist.
        digest = _derive(secret, rec.salt if rec else self._dummy_salt)
        if rec is None or not hmac.compare_digest(digest, rec.digest):
            raise AuthError("invalid API key")
        with self._lock:
            self._verified[fingerprint] = rec.key_id
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return self._identity(rec)

    @staticmethod
    def _identity(rec: KeyRecord) -> Identity:
        return Identity(rec.institution, rec.region, rec.role, f"key:{rec.key_id}")

    def authenticate_jwt(
        self,
        token: str,
        *,
        audiences: Sequence[str],
        algorithms: Sequence[str],
        leeway_s: int = 30,
        max_lifetime_s: int = 300,
    ) -> Identity:
        """The identity of the EHR that signed ``token`` for one of ``audiences``.

        Raises :class:`AuthError` naming the failed check (unknown issuer, bad signature,
        wrong audience, expired, too long-lived, replayed ``jti``), never the token.
        """
        import jwt

        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed JWT") from None
        issuer = unverified.get("iss")
        if not isinstance(issuer, str):
            raise AuthError("JWT has no iss claim")
        with self._lock:
            self._load_if_changed()
            ehr = self._ehrs.get(issuer)
            if ehr is None:
                raise AuthError("JWT issuer is not a registered EHR")
            key = self._public_keys.get(issuer)
            if key is None:
                key = self._public_keys[issuer] = _public_key(ehr.public_key_pem, issuer)
        if header.get("alg") not in algorithms:
            raise AuthError(f"JWT algorithm must be one of {', '.join(algorithms)}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                audience=list(audiences),
                issuer=issuer,
                leeway=leeway_s,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("JWT aud is not this CDS service's URL") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"JWT lacks the {e.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("JWT is not valid yet (iat/nbf in the future)") from None
        except jwt.PyJWTError:
            raise AuthError("JWT signature or claims are invalid") from None
        exp, iat = float(claims["exp"]), float(claims["iat"])
        if exp - iat > max_lifetime_s:
            raise AuthError(f"JWT lifetime exceeds {max_lifetime_s} s")
        if not self.replay.first_use(issuer, str(claims["jti"]), exp + leeway_s):
            raise AuthError("JWT jti was already used")
        return Identity(ehr.institution, ehr.region, "institution", f"ehr:{issuer}")


class ReplayCache(Protocol):
    """Remembers the JWT ids (``jti``) already accepted, until they expire."""

    def first_use(self, issuer: str, jti: str, until: float) -> bool:
        """``True`` the first time ``(issuer, jti)`` is presented before ``until`` (epoch
        seconds), ``False`` afterwards."""
        ...


class LocalReplayCache:
    """The replay cache of one process (enough for one replica)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_use(self, issuer: str, jti: str, until: float) -> bool:
        now = time.time()
        with self._lock:
            for k, expires in list(self._seen.items()):
                if expires < now:
                    del self._seen[k]
            if (issuer, jti) in self._seen:
                return False
            self._seen[(issuer, jti)] = until
            return True


def _public_key(pem: str, issuer: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ConfigError(f"EHR {issuer}: public key is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ConfigError(f"EHR {issuer}: public key must be EC or RSA")
    return key


class RateLimiter:
    """Token buckets by identity: ``rate_per_minute`` refill, ``burst`` capacity.

    :meth:`acquire` returns 0 when the request may proceed, else the seconds until a token is
    available (the ``Retry-After``). Buckets of idle identities are dropped beyond ``max_keys``.
    """

    def __init__(self, rate_per_minute: float, burst: int, *, max_keys: int = 10_000) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str, now: float | None = None) -> float:
        """The seconds until ``key`` has a token (0: it has one now), without taking it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def acquire(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait
