"""The service on a real uvicorn server on 127.0.0.1: concurrent mixed institutions batched
together, body limits over a socket, OpenAPI fuzzing with no 5xx, and ``feddx serve`` itself
as a process answering each UCI hospital with its own chain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import bearer
from .world import CASE, World, free_port

pytestmark = pytest.mark.server


def test_concurrent_institutions_are_answered_and_batched(
    server: Callable[..., str], world: World
) -> None:
    base = server(batch_window_ms=30)
    chains = {
        "cleveland": "institutional/cleveland/v1",
        "va-long-beach": "regional/usa/v1",
        "hungary-inst": "global/v1",
    }
    order = [inst for _ in range(4) for inst in chains]

    async def run() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def one(i: int, inst: str) -> tuple[str, httpx.Response]:
                case = {**CASE, "case_id": f"c{i}"}
                return inst, await client.post(
                    "/v1/diagnose", json={"case": case}, headers=bearer(world.keys[inst])
                )

            return await asyncio.gather(*(one(i, inst) for i, inst in enumerate(order)))

    results = asyncio.run(run())
    assert all(r.status_code == 200 for _, r in results), [r.text for _, r in results]
    for inst, r in results:
        assert r.json()["chain"]["answering"] == chains[inst]
    assert max(r.json()["timing"]["batch_cases"] for _, r in results) > 1
    metrics = httpx.get(f"{base}/metrics", headers=bearer(world.keys["operator"])).text
    assert 'feddx_requests_total{route="/v1/diagnose",status="200"} 12.0' in metrics
    batches = float(
        next(x for x in metrics.splitlines() if x.startswith("feddx_batch_cases_count")).split()[-1]
    )
    assert batches < 12  # fewer batches than requests: cases were scored together


def test_body_limits_over_a_socket(server: Callable[..., str], world: World) -> None:
    base = server(max_body_bytes=2048)
    key = bearer(world.keys["cleveland"])
    big = {"case": {**CASE, "text": "x" * 4000}}
    r = httpx.post(f"{base}/v1/diagnose", json=big, headers=key)
    assert r.status_code == 413 and r.json()["detail"] == "request body exceeds 2048 bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it streams
        yield b'{"case": {"case_id": "c", "text": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}}'

    r = httpx.post(
        f"{base}/v1/diagnose", content=chunks(), headers={**key, "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert httpx.post(f"{base}/v1/diagnose", json={"case": CASE}, headers=key).status_code == 200


def test_openapi_fuzzing_finds_no_server_error(server: Callable[..., str], world: World) -> None:
    """schemathesis generates requests for every operation (bounded) against the live server."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    base = server(rate_per_minute=100_000, rate_burst=100_000)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    auth = bearer(world.keys["cleveland"])
    failures: list[str] = []
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tested.append(f"{operation.method.upper()} {operation.path}")

        @settings(
            max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base, headers=auth, timeout=30)
            # A request naming other candidates than the adapter's is refused with a
            # documented 503 (it is not the server failing); any other 5xx is a failure.
            refused = response.status_code == 503 and "request's list" in response.text
            if response.status_code >= 500 and not refused:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )
            if response.status_code == 422:
                body = response.json()
                assert isinstance(body["detail"], list) and all(
                    "input" not in e for e in body["detail"]
                )

        check()
    assert {"POST /v1/diagnose", "POST /cds-services/{service_id}", "GET /v1/models"} <= set(tested)
    assert failures == []


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started, by its id
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def uci_world(model: str, root: Path) -> dict[str, tuple[str, str]]:
    """A registry of one chain per UCI hospital (global > its region > itself) for ``model``:
    hospital -> (registry institution name, region)."""
    import torch

    from feddx.data.uci_heart import HOSPITALS
    from feddx.model.adapter import LoraSpec, attach_lora, save_adapter
    from feddx.model.loading import load_base_model
    from feddx.personalize.registry import AdapterRegistry, normalize_scope

    loaded = load_base_model(model)
    net = attach_lora(loaded.model, LoraSpec(rank=2, alpha=4, dropout=0.0, top_layers=1))
    reg = AdapterRegistry(root / "registry")

    def adapter(seed: int) -> Path:
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.05)
        out = root / "sources" / str(seed)
        save_adapter(
            net,
            out,
            base_fingerprint=loaded.fingerprint,
            max_prompt_tokens=128,
            metadata={"data": "uci-heart"},
        )
        return out

    g = reg.register(adapter(1), level="global")
    regions: dict[str, str] = {}
    hospitals = {}
    for i, (hospital, (institution, region)) in enumerate(sorted(HOSPITALS.items())):
        slug = normalize_scope(institution.replace("/", "-"))
        if region not in regions:
            regions[region] = reg.register(
                adapter(10 + i), level="regional", region=region, parent_id=g.adapter_id
            ).adapter_id
        reg.register(
            adapter(20 + i), level="institutional", institution=slug, parent_id=regions[region]
        )
        hospitals[hospital] = (slug, normalize_scope(region))
    return hospitals


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", ["tiny", pytest.param("smollm2-135m-instruct", marks=pytest.mark.smollm2)]
)
def test_feddx_serve_answers_each_uci_hospital_with_its_own_chain(
    tmp_path: Path, tokenizer: Any, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from feddx.cli import main
    from feddx.data.uci_heart import HOSPITALS, load_uci_heart
    from tiny_llama import make_tiny_llama

    if model == "tiny":
        model = str(tmp_path / "tiny")
        make_tiny_llama(len(tokenizer), 2, initializer_range=0.2).save_pretrained(model)
        tokenizer.save_pretrained(model)
    hospitals = uci_world(model, tmp_path)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "FEDDX_SERVE_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
    }
    feddx = [str(Path(sys.executable).with_name("feddx"))]
    keys = {}
    for hospital, (slug, region) in hospitals.items():  # the CLI in-process: one import of torch
        assert (
            main(
                [
                    "serve",
                    "keys",
                    "add",
                    slug,
                    "--region",
                    region,
                    "--keys",
                    str(tmp_path / "keys.json"),
                ]
            )
            == 0
        )
        keys[hospital] = capsys.readouterr().out.strip()
        assert (
            keys[hospital].startswith("fdx_")
            and keys[hospital] not in (tmp_path / "keys.json").read_text()
        )
    port = free_port()
    proc = _start(
        [
            *feddx,
            "serve",
            "--model",
            model,
            "--registry",
            str(tmp_path / "registry"),
            "--keys",
            str(tmp_path / "keys.json"),
            "--port",
            str(port),
            "--candidates",
            "uci-heart",
        ],
        env,
        tmp_path / "serve.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "feddx serve did not become ready"
            time.sleep(0.5)
        by_institution = {inst: h for h, (inst, _) in HOSPITALS.items()}
        cases = {}
        for case in load_uci_heart(None):
            cases.setdefault(by_institution[case.institution], case)
        for hospital, (slug, region) in hospitals.items():
            body = {"case": json.loads(cases[hospital].model_dump_json())}
            r = httpx.post(
                f"{base}/v1/diagnose", json=body, headers=bearer(keys[hospital]), timeout=60
            )
            assert r.status_code == 200, r.text
            chain = [a["id"] for a in r.json()["chain"]["adapters"]]
            assert chain == ["global/v1", f"regional/{region}/v1", f"institutional/{slug}/v1"], (
                hospital,
                chain,
            )
            assert r.json()["candidates"] == 5
        log = (tmp_path / "serve.log").read_text()
        assert "POST /v1/diagnose" not in log  # no access log: paths can hold patient ids
    finally:
        _stop(proc)
    assert proc.returncode is not None
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["institution"] for x in audit if x["route"] == "/v1/diagnose"] == [
        s for s, _ in hospitals.values()
    ]
