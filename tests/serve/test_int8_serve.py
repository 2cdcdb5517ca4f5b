"""The service's int8 switch (issue 25 item 5): answers come from the int8 base model with the
institution's adapter, and every answer's ``model`` says ``+int8``; the default is float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .conftest import bearer
from .world import CASE, World


def _answer(client: Any, world: World) -> dict[str, Any]:
    r = client.post(
        "/v1/diagnose", json={"case": CASE, "top_k": 5}, headers=bearer(world.keys["cleveland"])
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_int8_answers_are_flagged_and_close_to_float32(
    make_client: Callable[..., Any], world: World
) -> None:
    plain = _answer(make_client(), world)
    int8 = _answer(make_client(int8=True), world)
    assert not plain["model"].endswith("+int8")
    assert int8["model"] == plain["model"] + "+int8"
    assert int8["chain"]["answering"] == plain["chain"]["answering"] == "institutional/cleveland/v1"
    p = {d["name"]: d["probability"] for d in plain["differential"]}
    q = {d["name"]: d["probability"] for d in int8["differential"]}
    assert p.keys() == q.keys() and p != q  # really another computation ...
    assert max(abs(p[k] - q[k]) for k in p) < 0.2  # ... of nearly the same answer
