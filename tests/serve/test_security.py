"""Credentials and refusals: hashed API keys, EHR JWTs, rate limits, body limits; a refused
request writes nothing but its audit line."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feddx.errors import ConfigError
from feddx.serve.audit import read_audit
from feddx.serve.security import AuthError, KeyStore, RateLimiter

from .conftest import bearer
from .world import CASE, World

AUD = "https://cds.example.org/cds-services/feddx-differential"


def ec_keypair() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP384R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


def make_jwt(private: Any, **claims: Any) -> str:
    import jwt

    now = int(time.time())
    body = {
        "iss": "https://ehr.example.org",
        "aud": AUD,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm="ES384", headers={"kid": "k1"})


def test_api_key_is_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key, rec = store.add_key("cleveland", "usa")
    assert key.startswith(f"fdx_{rec.key_id}_") and len(key) > 50
    text = (tmp_path / "keys.json").read_text()
    secret = key.split("_", 2)[2]
    assert secret not in text and key not in text
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    saved = json.loads(text)["keys"][0]
    assert saved["kdf"] == "scrypt" and len(bytes.fromhex(saved["salt"])) == 16
    who = KeyStore(tmp_path / "keys.json").authenticate_key(key)  # a fresh reader
    assert (who.institution, who.region, who.role, who.subject) == (
        "cleveland",
        "usa",
        "institution",
        f"key:{rec.key_id}",
    )
    # A second key of the same institution gets its own salt.
    key2, rec2 = store.add_key("cleveland", "usa")
    assert rec2.salt != rec.salt and key2 != key
    for wrong in (
        key[:-1] + ("A" if key[-1] != "A" else "B"),
        f"fdx_000000000000_{secret}",
        "fdx_",
        "nonsense",
    ):
        with pytest.raises(AuthError, match="invalid API key"):
            store.authenticate_key(wrong)


def test_revoked_key_and_edited_file_take_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server_side = KeyStore(path)
    admin = KeyStore(path)
    key, rec = admin.add_key("cleveland", "usa")
    assert server_side.authenticate_key(key).institution == "cleveland"
    time.sleep(0.01)
    admin.revoke(rec.key_id)
    with pytest.raises(AuthError):
        server_side.authenticate_key(key)  # the verified-key cache was dropped with the change
    with pytest.raises(ConfigError, match="no key"):
        admin.revoke(rec.key_id)


def test_corrupt_keys_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(
        '{"format": 1, "keys": [{"key_id": "x", "kdf": "scrypt", "n": 16384, "r": 8, "p": 1}]}'
    )
    with pytest.raises(ConfigError, match=r"keys\.json: keys\[0\] is malformed"):
        KeyStore(path)
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not JSON"):
        KeyStore(path)


def test_ehr_jwt_checks(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    private, public = ec_keypair()
    store.add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    check = dict(audiences=[AUD], algorithms=["ES384", "RS384"], leeway_s=5, max_lifetime_s=300)
    who = store.authenticate_jwt(make_jwt(private), **check)
    assert (who.institution, who.subject) == ("cleveland", "ehr:https://ehr.example.org")
    token = make_jwt(private)
    store.authenticate_jwt(token, **check)
    cases = {
        "already used": token,
        "expired": make_jwt(private, iat=int(time.time()) - 400, exp=int(time.time()) - 100),
        "aud is not": make_jwt(private, aud="https://elsewhere.example.org/cds-services/x"),
        "lacks the jti": make_jwt(private, jti=None),
        "lifetime exceeds": make_jwt(private, exp=int(time.time()) + 3600),
        "not a registered EHR": make_jwt(private, iss="https://other-ehr.example.org"),
        "malformed": "abc.def.ghi",
    }
    other_private, _ = ec_keypair()
    cases["signature or claims are invalid"] = make_jwt(other_private)
    for reason, bad in cases.items():
        with pytest.raises(AuthError, match=reason):
            store.authenticate_jwt(bad, **check)
    import jwt

    unsigned = jwt.encode(
        {"iss": "https://ehr.example.org", "aud": AUD, "iat": 1, "exp": 2, "jti": "x"},
        None,
        algorithm="none",
    )
    with pytest.raises(AuthError, match="algorithm must be one of"):
        store.authenticate_jwt(unsigned, **check)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        store.add_ehr("https://bad.example.org", "cleveland", None, "-----BEGIN NONSENSE-----")


def test_rate_limiter_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=3)
    assert [limiter.acquire("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", now=100.0) == pytest.approx(1.0)
    assert limiter.acquire("b", now=100.0) == 0.0  # buckets are per identity
    assert limiter.acquire("a", now=101.5) == 0.0  # 1.5 tokens refilled, one spent
    assert limiter.acquire("a", now=101.5) == pytest.approx(0.5)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_refused_requests_write_nothing_but_their_audit_lines(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client(max_body_bytes=4096)
    root = world.root
    history = {"prior_conditions": ["Asthma"]}
    attempts = [
        ("missing key", 401, dict(method="PUT", url="/v1/patients/p1/history", json=history)),
        (
            "wrong key",
            401,
            dict(
                method="PUT",
                url="/v1/patients/p1/history",
                json=history,
                headers=bearer(world.keys["cleveland"] + "x"),
            ),
        ),
        (
            "operator key",
            403,
            dict(
                method="PUT",
                url="/v1/patients/p1/history",
                json=history,
                headers=bearer(world.keys["operator"]),
            ),
        ),
        (
            "oversized",
            413,
            dict(
                method="PUT",
                url="/v1/patients/p1/history",
                content=b'{"prior_conditions": ["' + b"x" * 5000 + b'"]}',
                headers={**bearer(world.keys["cleveland"]), "Content-Type": "application/json"},
            ),
        ),
        (
            "malformed",
            400,
            dict(
                method="PUT",
                url="/v1/patients/p1/history",
                content=b"{",
                headers={**bearer(world.keys["cleveland"]), "Content-Type": "application/json"},
            ),
        ),
        (
            "invalid",
            422,
            dict(
                method="PUT",
                url="/v1/patients/p1/history",
                json={"prior_conditions": "Asthma-SECRET", "x": 1},
                headers=bearer(world.keys["cleveland"]),
            ),
        ),
        (
            "bad patient id",
            422,
            dict(
                method="PUT",
                url="/v1/patients/p%20secret/history",
                json=history,
                headers=bearer(world.keys["cleveland"]),
            ),
        ),
        (
            "other's adapter",
            403,
            dict(
                method="POST",
                url="/v1/diagnose",
                json={"case": CASE, "adapter": "institutional/cleveland/v1"},
                headers=bearer(world.keys["hungary-inst"]),
            ),
        ),
        (
            "other's patient",
            404,
            dict(
                method="GET",
                url="/v1/patients/p9/history",
                headers=bearer(world.keys["va-long-beach"]),
            ),
        ),
    ]
    client.put("/v1/patients/p9/history", json=history, headers=bearer(world.keys["cleveland"]))
    before = {k: v for k, v in _files(root).items() if not k.startswith("audit")}
    for what, status, req in attempts:
        r = client.request(**req)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert "SECRET" not in r.text and "x" * 100 not in r.text
        assert r.json()["request_id"] == r.headers["x-request-id"]
    after = {k: v for k, v in _files(root).items() if not k.startswith("audit")}
    assert after == before  # no history written, no temporary file left
    lines = read_audit(root / "audit" / "audit.jsonl")[1:]  # after the one successful PUT
    assert [line["status"] for line in lines] == [s for _, s, _ in attempts]
    assert lines[0]["subject"] is None and lines[2]["subject"].startswith("key:")
    assert lines[3]["outcome"] == "refused: body too large"
    text = (root / "audit" / "audit.jsonl").read_text()
    assert "SECRET" not in text and "Asthma" not in text and world.keys["cleveland"] not in text


def test_rate_limit_is_per_identity_429_with_retry_after(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client(rate_per_minute=1, rate_burst=2)
    cle = bearer(world.keys["cleveland"])
    codes = [client.get("/v1/models", headers=cle).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.get("/v1/models", headers=cle)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client.get("/v1/models", headers=bearer(world.keys["va-long-beach"])).status_code == 200


def test_guessing_keys_is_rate_limited_per_address(
    make_client: Callable[..., Any], world: World
) -> None:
    # No refill within the test however loaded the machine (the default refills every 2 s).
    client = make_client(auth_failures_per_minute=0.01)
    codes = [
        client.get("/v1/models", headers=bearer(f"fdx_{i:012x}_guess")).status_code
        for i in range(11)
    ]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    assert all(c == 401 for c in codes[:10])


def test_cds_endpoints_accept_the_ehr_jwt_for_the_url_called(
    make_client: Callable[..., Any], world: World
) -> None:
    private, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    client = make_client(public_url="https://cds.example.org")
    r = client.get(
        "/cds-services",
        headers=bearer(make_jwt(private, aud="https://cds.example.org/cds-services")),
    )
    assert r.status_code == 200 and r.json()["services"][0]["id"] == "feddx-differential"
    r = client.get("/cds-services", headers=bearer(make_jwt(private)))  # aud: another endpoint
    assert r.status_code == 401 and "aud" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
