"""Several replicas (issue 25 item 6): with ``shared_store`` set to a Redis URL, a JWT's ``jti``
used at one service process is refused at another, and the rate limits hold across them; the
default in-process store is per replica. Redis is Debian's ``redis-server`` on a loopback port
(``scripts/test.sh`` installs it when missing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from feddx.serve.security import KeyStore
from feddx.serve.store import RedisState, StoreUnavailable

from .conftest import CDS_BASE, bearer
from .test_security import ec_keypair, make_jwt
from .world import World, free_port

DISCOVERY = f"{CDS_BASE}/cds-services"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started, by its id
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server on 127.0.0.1 (no persistence), stopped by its process id."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).is_file():
        pytest.skip("Debian's redis-server is not installed (scripts/test.sh installs it)")
    port = free_port()
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    cmd += ["no", "--dir", str(tmp_path)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while RedisState(url).problem() is not None:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield url
    finally:
        _stop(proc)


def test_redis_state_shares_first_use_and_buckets(redis_url: str) -> None:
    one, two = RedisState(redis_url), RedisState(redis_url)
    until = time.time() + 60
    assert one.first_use("iss", "jti-1", until) is True
    assert two.first_use("iss", "jti-1", until) is False
    assert two.first_use("iss", "jti-2", until) is True
    a, b = one.limiter("rate", 60.0, 2), two.limiter("rate", 60.0, 2)
    assert b.wait("key:x") == 0
    assert [a.acquire("key:x"), b.acquire("key:x")] == [0, 0]
    assert b.wait("key:x") > 0 and a.acquire("key:x") > 0
    assert a.acquire("key:other") == 0  # buckets are per key


def test_an_unreachable_store_refuses_instead_of_accepting() -> None:
    state = RedisState(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        state.first_use("iss", "jti", time.time() + 60)
    assert state.problem() is not None


def test_in_process_stores_are_per_replica(world: World, make_client: Callable[..., Any]) -> None:
    """The control: without a shared store each replica remembers its own jtis only."""
    private, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    first, second = make_client(public_url=CDS_BASE), make_client(public_url=CDS_BASE)
    token = bearer(make_jwt(private, aud=DISCOVERY))
    assert first.get("/cds-services", headers=token).status_code == 200
    assert second.get("/cds-services", headers=token).status_code == 200  # replayed, accepted
    assert first.get("/cds-services", headers=token).status_code == 401


def _serve(root: Path, name: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [str(Path(sys.executable).with_name("feddx")), "serve", "--model", str(root / "tiny")]
    cmd += ["--registry", str(root / "registry"), "--keys", str(root / "keys.json")]
    cmd += ["--audit-log", str(root / f"{name}.jsonl"), "--port", str(port)]
    log = (root / f"{name}.log").open("wb")
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.mark.server
@pytest.mark.slow
def test_a_jti_used_at_one_process_is_refused_at_the_other(
    world: World, tokenizer: Any, redis_url: str, tmp_path: Path
) -> None:
    from tiny_llama import make_tiny_llama

    make_tiny_llama(len(tokenizer), 2).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    private, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "FEDDX_SERVE_PUBLIC_URL": CDS_BASE,
        "FEDDX_SERVE_SHARED_STORE": redis_url,
        "FEDDX_SERVE_RATE_BURST": "5",
        "FEDDX_SERVE_RATE_PER_MINUTE": "1",
    }
    ports = [free_port(), free_port()]
    procs = [_serve(tmp_path, f"replica-{i}", port, env) for i, port in enumerate(ports)]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        deadline = time.monotonic() + 120
        for proc, base in zip(procs, bases, strict=True):
            while True:
                assert proc.poll() is None, (tmp_path / "replica-0.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "feddx serve did not start"
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
        a, b = bases
        token = bearer(make_jwt(private, aud=DISCOVERY))
        assert httpx.get(f"{a}/cds-services", headers=token, timeout=10).status_code == 200
        r = httpx.get(f"{b}/cds-services", headers=token, timeout=10)
        assert r.status_code == 401 and r.json()["detail"] == "JWT jti was already used"
        fresh = bearer(make_jwt(private, aud=DISCOVERY))
        assert httpx.get(f"{b}/cds-services", headers=fresh, timeout=10).status_code == 200
        # One bucket for the EHR across both replicas: 5 answered requests in all (the two
        # above and three here), then 429 at either.
        codes = [
            httpx.get(
                f"{base}/cds-services",
                headers=bearer(make_jwt(private, aud=DISCOVERY)),
                timeout=10,
            ).status_code
            for base in (a, b, a, b)
        ]
        assert codes == [200, 200, 200, 429]
    finally:
        for proc in procs:
            _stop(proc)
