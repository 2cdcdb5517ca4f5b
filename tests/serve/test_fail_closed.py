"""Fail closed (issue 25 item 2): when no adapter of an institution's chain verifies, or the
registry is unreadable, the service refuses (503, with the reason) instead of answering with the
untuned base model; ``/readyz`` is 503 while the registry is unreadable; the base model answers
only with ``base_model_fallback`` set, and the answer says so."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from .conftest import bearer
from .test_cds_hooks import REQUEST, URL
from .world import CASE, World


def _diagnose(client: Any, world: World, who: str = "cleveland") -> Any:
    return client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys[who]))


def test_registry_removed_under_a_running_service_refuses_within_one_request(
    ehr: Any, world: World
) -> None:
    client, auth = ehr
    assert _diagnose(client, world).status_code == 200
    assert client.get("/readyz").status_code == 200
    shutil.rmtree(world.root / "registry")
    r = _diagnose(client, world)
    assert r.status_code == 503, r.text
    assert r.json()["detail"] == "the adapter registry is unreadable (its database file is missing)"
    assert r.headers["retry-after"] == "30"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    hook = client.post("/cds-services/feddx-differential", json=REQUEST, headers=auth(URL))
    assert hook.status_code == 503 and "registry is unreadable" in hook.json()["detail"]
    assert client.get("/healthz").status_code == 200  # alive: a restart would not help


def test_no_adapter_verifies_is_503_with_the_reasons(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    for entry in world.registry.entries():
        shutil.rmtree(entry.path)
    r = _diagnose(client, world)
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert detail.startswith("no adapter of this institution's chain verifies (")
    assert "institutional/cleveland/v1 skipped: missing" in detail
    assert client.get("/readyz").status_code == 200  # the registry itself is readable


def test_base_model_answers_only_when_allowed_and_says_so(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client(base_model_fallback=True, candidates="uci-heart")
    shutil.rmtree(world.root / "registry")
    r = _diagnose(client, world)
    assert r.status_code == 200
    chain = r.json()["chain"]
    assert chain["base_model_only"] is True and chain["answering"] is None
    assert chain["fallbacks"] == [
        "the adapter registry is unreadable (its database file is missing)"
    ]
    assert client.get("/readyz").status_code == 200


def test_adapter_answers_are_not_marked_base_model(
    make_client: Callable[..., Any], world: World
) -> None:
    r = _diagnose(make_client(), world)
    assert r.status_code == 200 and r.json()["chain"]["base_model_only"] is False
