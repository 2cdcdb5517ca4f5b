"""The service's HTTP contract, through FastAPI's TestClient: diagnoses answered by each
institution's own chain, FHIR input, stored histories, models, health, metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from feddx.data.schema import Case
from feddx.data.uci_heart import ICD10
from feddx.serve.audit import read_audit
from feddx.serve.schemas import EXAMPLE_BUNDLE

from .conftest import bearer
from .world import CANDIDATES, CASE, World, make_diagnoser


def expected_ranking(tokenizer: Any, adapter_dir: Any, case: dict[str, Any]) -> list[str]:
    """What the Diagnoser itself ranks for ``case`` with the adapter in ``adapter_dir``."""
    d = make_diagnoser(tokenizer)
    d.add_adapter(adapter_dir, name="a")
    [pred] = d.diagnose([Case.model_validate(case)], CANDIDATES, adapter="a", icd10=ICD10)
    return [r.name for r in pred.ranked]


@pytest.fixture()
def rankings(tokenizer: Any, world: World) -> dict[str, list[str]]:
    out = {
        n: expected_ranking(tokenizer, world.sources[n], CASE)
        for n in ("global", "usa", "cleveland")
    }
    # The adapters must disagree on the top diagnosis, or routing would be invisible.
    assert len({r[0] for r in out.values()}) == 3, out
    return out


def test_each_institution_is_answered_by_its_own_chain(
    make_client: Callable[..., Any], world: World, rankings: dict[str, list[str]]
) -> None:
    client = make_client()
    expect = {
        "cleveland": (["global/v1", "regional/usa/v1", "institutional/cleveland/v1"], "cleveland"),
        "va-long-beach": (["global/v1", "regional/usa/v1"], "usa"),
        "hungary-inst": (["global/v1"], "global"),
    }
    for institution, (chain, adapter) in expect.items():
        r = client.post(
            "/v1/diagnose", json={"case": CASE, "top_k": 5}, headers=bearer(world.keys[institution])
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [a["id"] for a in body["chain"]["adapters"]] == chain
        assert body["chain"]["answering"] == chain[-1]
        assert body["chain"]["fallbacks"] == []
        assert [d["name"] for d in body["differential"]] == rankings[adapter]
        assert body["candidates"] == 5
        probs = [d["probability"] for d in body["differential"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
        assert {d["name"]: d["icd10"] for d in body["differential"]} == ICD10
        assert body["timing"]["batch_cases"] >= 1 and body["timing"]["total_ms"] > 0


def test_response_has_no_patient_text_and_top_k_limits_it(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    case = {**CASE, "text": "Mr Zebulon Quux, MRN 99812, chest pain"}
    r = client.post(
        "/v1/diagnose", json={"case": case, "top_k": 2}, headers=bearer(world.keys["cleveland"])
    )
    assert r.status_code == 200
    assert len(r.json()["differential"]) == 2
    assert "Zebulon" not in r.text and "99812" not in r.text
    audit = (world.root / "audit" / "audit.jsonl").read_text()
    assert "Zebulon" not in audit and "99812" not in audit and "chest" not in audit


def test_fhir_bundle_is_diagnosed_like_the_case_it_becomes(
    make_client: Callable[..., Any], world: World, tokenizer: Any
) -> None:
    from feddx.serve.fhir_input import case_from_bundle

    client = make_client()
    r = client.post(
        "/v1/diagnose", json={"fhir": EXAMPLE_BUNDLE}, headers=bearer(world.keys["cleveland"])
    )
    assert r.status_code == 200, r.text
    case = case_from_bundle(EXAMPLE_BUNDLE).model_dump(mode="json")
    assert case["findings"][-1] == {
        "name": "resting BP",
        "value": 150.0,
        "unit": "mmHg",
        "negated": False,
    }
    want = expected_ranking(tokenizer, world.sources["cleveland"], case)
    assert [d["name"] for d in r.json()["differential"]] == want


def test_malformed_fhir_is_422_naming_entry_and_field_without_values(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    bundle = json.loads(json.dumps(EXAMPLE_BUNDLE))
    bundle["entry"][1]["resource"]["period"] = {"start": "SECRET-not-a-date"}
    r = client.post("/v1/diagnose", json={"fhir": bundle}, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 422
    [item] = r.json()["detail"]
    assert item["loc"] == ["body", "fhir", "entry", 1]
    assert item["msg"].startswith("Encounter: invalid field period.start")
    assert "SECRET" not in r.text
    r = client.post(
        "/v1/diagnose",
        json={"fhir": {"resourceType": "Patient", "id": "x"}},
        headers=bearer(world.keys["cleveland"]),
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "fhir", "resourceType"]


def test_validation_error_names_the_field_and_never_echoes_the_value(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    case = {**CASE, "age": "SIXTY-THREE-SECRET", "sex": "SECRET-SEX"}
    r = client.post("/v1/diagnose", json={"case": case}, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert ("body", "case", "age") in locs and ("body", "case", "sex") in locs
    assert "SECRET" not in r.text and "input" not in r.json()["detail"][0]
    r = client.post(
        "/v1/diagnose",
        json={"case": CASE, "fhir": EXAMPLE_BUNDLE},
        headers=bearer(world.keys["cleveland"]),
    )
    assert r.status_code == 422 and "exactly one" in r.json()["detail"][0]["msg"]
    # An unknown key is the caller's text: its place is named, the key itself never.
    r = client.post(
        "/v1/diagnose",
        json={"case": CASE, "Maria_SECRET_Silva": 1},
        headers=bearer(world.keys["cleveland"]),
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "*"]
    assert r.json()["detail"][0]["type"] == "extra_forbidden" and "SECRET" not in r.text


def test_malformed_json_is_400(make_client: Callable[..., Any], world: World) -> None:
    client = make_client()
    r = client.post(
        "/v1/diagnose",
        content=b'{"case": {"case_id": "SECRET", ',
        headers={**bearer(world.keys["cleveland"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["detail"].startswith("malformed JSON at character")
    assert "SECRET" not in r.text


def test_stored_history_is_used_and_only_by_its_institution(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    history = {"prior_conditions": ["Hypertension"], "medications": ["aspirin"]}
    cle, va = bearer(world.keys["cleveland"]), bearer(world.keys["va-long-beach"])
    assert client.put("/v1/patients/p-77/history", json=history, headers=cle).status_code == 204
    got = client.get("/v1/patients/p-77/history", headers=cle)
    assert got.status_code == 200 and got.json()["prior_conditions"] == ["Hypertension"]
    # Another institution does not see the patient at all.
    assert client.get("/v1/patients/p-77/history", headers=va).status_code == 404
    assert client.delete("/v1/patients/p-77/history", headers=va).status_code == 404
    with_h = client.post("/v1/diagnose", json={"case": CASE, "patient_id": "p-77"}, headers=cle)
    without = client.post("/v1/diagnose", json={"case": CASE, "patient_id": "p-77"}, headers=va)
    assert with_h.json()["history_used"] is True and without.json()["history_used"] is False
    # The store's paths hold neither the institution's name nor the patient id.
    names = [p.name for p in (world.root / "histories").rglob("*")]
    assert names and not any("p-77" in n or "cleveland" in n for n in names)
    assert client.delete("/v1/patients/p-77/history", headers=cle).status_code == 204
    assert client.get("/v1/patients/p-77/history", headers=cle).status_code == 404
    lines = read_audit(world.root / "audit" / "audit.jsonl")
    refs = {line["patient_ref"] for line in lines if line["patient_ref"]}
    assert len(refs) == 2  # one per institution: the same id is another patient elsewhere
    assert all("p-77" not in json.dumps(line) for line in lines)


def test_models_lists_only_the_callers_adapters(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    r = client.get("/v1/models", headers=bearer(world.keys["va-long-beach"]))
    assert r.status_code == 200
    body = r.json()
    assert body["institution"] == "va-long-beach" and body["region"] == "usa"
    assert [a["id"] for a in body["adapters"]] == ["global/v1", "regional/usa/v1"]
    assert body["chain"]["answering"] == "regional/usa/v1"
    assert body["candidates"] == CANDIDATES and body["ready"] is True
    r = client.get("/v1/models", headers=bearer(world.keys["cleveland"]))
    assert [a["id"] for a in r.json()["adapters"]] == [
        "global/v1",
        "regional/usa/v1",
        "institutional/cleveland/v1",
    ]


def test_pinned_adapter_must_be_the_callers_own(
    make_client: Callable[..., Any], world: World, rankings: dict[str, list[str]]
) -> None:
    client = make_client()
    cle, hun = bearer(world.keys["cleveland"]), bearer(world.keys["hungary-inst"])
    r = client.post("/v1/diagnose", json={"case": CASE, "adapter": "global/v1"}, headers=cle)
    assert r.status_code == 200 and r.json()["chain"]["answering"] == "global/v1"
    assert r.json()["differential"][0]["name"] == rankings["global"][0]
    r = client.post(
        "/v1/diagnose", json={"case": CASE, "adapter": "institutional/cleveland/v1"}, headers=hun
    )
    assert r.status_code == 403
    r = client.post("/v1/diagnose", json={"case": CASE, "adapter": "regional/usa/v1"}, headers=hun)
    assert r.status_code == 403
    r = client.post("/v1/diagnose", json={"case": CASE, "adapter": "global/v9"}, headers=cle)
    assert r.status_code == 404


def test_new_version_answers_without_restart(
    make_client: Callable[..., Any], world: World, tokenizer: Any
) -> None:
    client = make_client()
    cle = bearer(world.keys["cleveland"])
    first = client.post("/v1/diagnose", json={"case": CASE}, headers=cle).json()
    assert first["chain"]["answering"] == "institutional/cleveland/v1"
    world.registry.register(
        world.sources["cleveland-v2"],
        level="institutional",
        institution="cleveland",
        parent_id=world.ids["usa"],
    )
    second = client.post("/v1/diagnose", json={"case": CASE}, headers=cle).json()
    assert second["chain"]["answering"] == "institutional/cleveland/v2"
    want = expected_ranking(tokenizer, world.sources["cleveland-v2"], CASE)
    assert [d["name"] for d in second["differential"]] == want


def test_corrupt_adapter_falls_back_to_its_parent_and_says_so(
    make_client: Callable[..., Any], world: World, rankings: dict[str, list[str]]
) -> None:
    entry = world.registry.get("institutional/cleveland/v1")
    weights = entry.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    client = make_client()
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 200
    chain = r.json()["chain"]
    assert chain["answering"] == "regional/usa/v1"
    assert len(chain["fallbacks"]) == 1 and chain["fallbacks"][0].startswith(
        "institutional/cleveland/v1"
    )
    assert [d["name"] for d in r.json()["differential"]] == rankings["usa"]
    [line] = [
        x for x in read_audit(world.root / "audit" / "audit.jsonl") if x["route"] == "/v1/diagnose"
    ]
    assert line["answering"] == "regional/usa/v1" and line["fallbacks"] == 1


def test_adapter_cache_is_bounded_and_counts_hits(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client(adapter_cache=1)
    for inst in ("cleveland", "va-long-beach", "cleveland", "cleveland"):
        r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys[inst]))
        assert r.status_code == 200
    text = client.get("/metrics", headers=bearer(world.keys["operator"])).text
    assert 'feddx_adapter_cache_total{result="miss"} 3.0' in text
    assert 'feddx_adapter_cache_total{result="hit"} 1.0' in text
    assert 'feddx_adapter_cache_total{result="evict"} 2.0' in text
    assert "feddx_adapters_held 1.0" in text


def test_health_readiness_and_metrics(make_client: Callable[..., Any], world: World) -> None:
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["cleveland"]))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(world.keys["cleveland"])).status_code == 403
    r = client.get("/metrics", headers=bearer(world.keys["operator"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'feddx_requests_total{route="/v1/diagnose",status="200"} 1.0' in r.text
    assert "feddx_batch_cases_count 1.0" in r.text
    assert 'feddx_answers_total{level="institutional"} 1.0' in r.text
    assert "feddx_model_ready 1.0" in r.text
    # An operator key diagnoses nothing.
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["operator"]))
    assert r.status_code == 403


def test_readiness_waits_for_the_model(world: World, make_settings: Callable[..., Any]) -> None:
    from fastapi.testclient import TestClient

    from feddx.serve.app import create_app

    app = create_app(
        make_settings(model=str(world.root / "no-such-model")), registry=world.registry
    )
    with TestClient(app) as client:
        app.state.service.wait_ready(30)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert client.get("/healthz").status_code == 503
        r = client.post(
            "/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["cleveland"])
        )
        assert r.status_code == 503


def test_no_candidate_list_is_503_naming_the_adapter(
    make_client: Callable[..., Any], world: World, tokenizer: Any
) -> None:
    from .world import save_adapter

    bare = save_adapter(tokenizer, world.root / "bare", 21, candidates=False)
    world.registry.register(
        bare, level="institutional", institution="hungary-inst", parent_id=world.ids["global"]
    )
    client = make_client()
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["hungary-inst"]))
    assert r.status_code == 503
    assert "institutional/hungary-inst/v1 records no candidate list" in r.json()["detail"]
    client = make_client(candidates="uci-heart")
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["hungary-inst"]))
    assert r.status_code == 200 and r.json()["candidates"] == 5


def test_an_adapter_trained_on_other_candidates_is_503_naming_it(
    make_client: Callable[..., Any], world: World, tokenizer: Any
) -> None:
    from .world import save_adapter

    other = ["Influenza", "Pneumonia", "Bronchitis"]
    path = save_adapter(tokenizer, world.root / "other", 22, names=other)
    world.registry.register(
        path, level="institutional", institution="hungary-inst", parent_id=world.ids["global"]
    )
    headers = bearer(world.keys["hungary-inst"])
    client = make_client(candidates="uci-heart")
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=headers)
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert "institutional/hungary-inst/v1 was trained on 3 candidates" in detail
    assert "the service's list of 5" in detail and "\n" not in detail
    # without a service list the adapter's own answers, and a request naming it is served
    client = make_client()
    r = client.post("/v1/diagnose", json={"case": CASE, "candidates": other[::-1]}, headers=headers)
    assert r.status_code == 200 and r.json()["candidates"] == 3


def test_a_request_naming_other_candidates_is_503_naming_the_adapter(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client(candidates="uci-heart")
    body = {"case": CASE, "candidates": ["Influenza", "Pneumonia"]}
    r = client.post("/v1/diagnose", json=body, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 503
    assert r.json()["detail"].startswith(f"{world.ids['cleveland']} was trained on 5 candidates")
    assert "the request's list of 2" in r.json()["detail"]
    assert "only the request's: 2 names" in r.json()["detail"]
    assert "Influenza" not in r.text  # what the caller sent is counted, never quoted
    body["candidates"] = CANDIDATES[::-1]
    r = client.post("/v1/diagnose", json=body, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 200 and r.json()["candidates"] == 5


def test_openapi_has_examples_and_bearer_auth(make_client: Callable[..., Any]) -> None:
    schema = make_client().get("/openapi.json").json()
    req = schema["components"]["schemas"]["DiagnoseRequest"]
    assert req["examples"][0]["case"]["case_id"] == "visit-0001"
    assert "/v1/diagnose" in schema["paths"] and "/cds-services/{service_id}" in schema["paths"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/diagnose"]["post"]["security"] == [{"HTTPBearer": []}]
