"""JWT audience and proxies (issue 25 item 3): a CDS Hooks JWT's ``aud`` is checked against the
configured ``public_url`` (required once EHR issuers are registered), never the request's
``Host``; forwarded headers are believed only from ``trusted_proxies``; a throttled address is
refused before the key derivation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from feddx.cli import main
from feddx.errors import ConfigError
from feddx.serve import security
from feddx.serve.security import KeyStore

from .conftest import CDS_URL, bearer
from .test_cds_hooks import REQUEST
from .test_security import ec_keypair, make_jwt
from .world import World

OTHER = "https://other-cds.example.net/cds-services/feddx-differential"


def test_public_url_is_required_once_ehrs_are_registered(
    world: World,
    make_settings: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from feddx.serve.app import create_app

    _, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    with pytest.raises(ConfigError, match="registers EHR issuers but public_url is not set"):
        create_app(make_settings())
    argv = ["serve", "--registry", str(world.root / "registry"), "--keys", str(world.keys_file)]
    argv += ["--audit-log", str(tmp_path / "audit.jsonl")]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "public_url is not set" in err[-1] and "Traceback" not in "\n".join(err)


def test_settings_refuse_a_relative_public_url_and_bad_proxies(
    make_settings: Callable[..., Any],
) -> None:
    with pytest.raises(ConfigError, match="public_url"):
        make_settings(public_url="cds.example.org")
    with pytest.raises(ConfigError, match="trusted_proxies"):
        make_settings(trusted_proxies=["proxy.internal"])
    assert make_settings(trusted_proxies=["10.0.0.7/24"]).trusted_proxies == ("10.0.0.0/24",)


def test_jwt_for_another_service_with_a_spoofed_host_is_refused(ehr: Any, world: World) -> None:
    client, auth = ehr
    spoofed = {
        "Host": "other-cds.example.net",
        "X-Forwarded-Host": "other-cds.example.net",
        "X-Forwarded-Proto": "https",
    }
    path = "/cds-services/feddx-differential"
    r = client.post(path, json=REQUEST, headers=auth(OTHER) | spoofed)
    assert r.status_code == 401 and r.json()["detail"] == "JWT aud is not this CDS service's URL"
    r = client.post(path, json=REQUEST, headers=auth(CDS_URL) | spoofed)
    assert r.status_code == 200  # the URL the service is configured with still works


def test_jwts_are_refused_while_public_url_is_unset(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()  # no EHR at start, so it starts; one is registered while it runs
    private, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    token = make_jwt(private, aud="http://testserver/cds-services")
    r = client.get("/cds-services", headers=bearer(token))
    assert r.status_code == 401 and "public_url" in r.json()["detail"]


def test_a_throttled_address_costs_no_key_derivation(
    make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(auth_failures_per_minute=0.01)  # no refill within the test
    calls = []
    derive = security._derive

    def counting(secret: str, salt: bytes) -> bytes:
        calls.append(1)
        return derive(secret, salt)

    monkeypatch.setattr(security, "_derive", counting)
    codes = [
        client.get("/v1/models", headers=bearer(f"fdx_{i:012x}_guess")).status_code
        for i in range(16)
    ]
    assert codes[:10] == [401] * 10 and codes[10:] == [429] * 6
    assert len(calls) == 10


def _guesses(base: str, count: int) -> list[int]:
    with httpx.Client(base_url=base, timeout=30) as client:
        return [
            client.get(
                "/v1/models",
                headers=bearer(f"fdx_{i:012x}_guess") | {"X-Forwarded-For": f"203.0.113.{i}"},
            ).status_code
            for i in range(count)
        ]


@pytest.mark.server
def test_forwarded_for_is_ignored_unless_from_a_trusted_proxy(
    server: Callable[..., str],
) -> None:
    # Loopback is not trusted by default: rotating X-Forwarded-For does not escape the limit.
    codes = _guesses(server(auth_failures_per_minute=0.01), 12)
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    # A configured proxy's forwarded address is believed: each is its own client.
    trusted = server(trusted_proxies=["127.0.0.1"], auth_failures_per_minute=0.01)
    assert _guesses(trusted, 12) == [401] * 12
