"""The individual level in the service (issue 24 item 4, issue 26 item 3): on a real uvicorn,
a diagnosis for a patient with stored history says which history items and which of the
institution's similar past cases (its registered case index) were used, and the same call
after the history is deleted says none were; the audit line holds counts only; an institution
the registry does not know is answered from above and told so, and refused (503) when nothing
verifies. The CDS Hooks card says the same in its detail."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from feddx.data.schema import Case, Finding, Label
from feddx.personalize.case_index import register_case_index
from feddx.personalize.retrieval import CaseIndex
from feddx.serve.audit import read_audit
from tiny_embedder import BagEmbedder

from .conftest import bearer
from .world import BASE, CANDIDATES, CASE, World, make_diagnoser, running_server

pytestmark = pytest.mark.server

VOCAB = ("chest pain", "asymptomatic", "resting bp", "exercise angina", "typical", "cholesterol")
LABEL = CANDIDATES[3]
MEDICATION = {
    "resourceType": "MedicationRequest",
    "id": "m-1",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {"text": "Lisinopril 10 MG Oral Tablet"},
    "subject": {"reference": "Patient/pt-1"},
    "authoredOn": "2026-06-01T09:00:00Z",
}
HISTORY = {"prior_conditions": ["Hypertension"], "medications": ["aspirin"]}


def _past_cases() -> list[Case]:
    """Cleveland's past cases: three like CASE (all LABEL), two unlike it."""

    def case(i: int, findings: list[tuple[str, Any]], dx: str) -> Case:
        return Case(
            case_id=f"cle-{i}",
            patient_id=f"cle-patient-{i}",
            age=60,
            sex="male",
            findings=tuple(Finding(name=n, value=v) for n, v in findings),
            label=Label(diagnosis=dx),
        )

    like = [("chest pain", "asymptomatic"), ("resting BP", 140), ("exercise angina", True)]
    unlike = [("chest pain", "typical"), ("cholesterol", 200)]
    return [case(i, like, LABEL) for i in range(3)] + [
        case(3, unlike, CANDIDATES[0]),
        case(4, unlike, CANDIDATES[1]),
    ]


def _register_index(world: World, weight: float = 0.9) -> str:
    cases = _past_cases()
    entry = register_case_index(
        world.registry,
        CaseIndex.build(cases, BagEmbedder(VOCAB)),
        cases,
        institution="cleveland",
        region="usa",
        base_fingerprint=BASE,
        prior_weight=weight,
        k=3,
        scored_with=world.ids["cleveland"],
    )
    return entry.adapter_id


@pytest.fixture()
def base_url(
    world: World, tokenizer: Any, make_settings: Callable[..., Any]
) -> Any:  # Iterator[str]
    from feddx.serve.app import create_app

    app = create_app(make_settings(), diagnoser=make_diagnoser(tokenizer), registry=world.registry)
    app.state.service.embedder = BagEmbedder(VOCAB)
    with running_server(app) as url:
        yield url


def test_diagnose_says_which_history_and_similar_cases_were_used(
    world: World, base_url: str
) -> None:
    index_id = _register_index(world)
    cle = bearer(world.keys["cleveland"])
    patient = f"{base_url}/v1/patients/p-1/history"
    assert httpx.put(patient, json=HISTORY, headers=cle).status_code == 204
    call = {"case": CASE, "patient_id": "p-1"}
    r = httpx.post(f"{base_url}/v1/diagnose", json=call, headers=cle, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    ind = body["individual"]
    assert ind["history_items"] == 2 and ind["history_stored"] is True
    assert ind["history"] == {"conditions": 1, "medications": 1, "encounters": 0}
    assert ind["case_index"] == index_id and ind["prior_weight"] == 0.9
    assert [c["diagnosis"] for c in ind["similar_cases"]] == [LABEL] * 3
    assert all(c["ref"].startswith("case#") for c in ind["similar_cases"])
    assert ind["similar_cases"][0]["similarity"] > 0.9
    # The prior (weight 0.9, three neighbours all LABEL) decides the top diagnosis.
    assert body["differential"][0]["name"] == LABEL
    assert body["institution_known"] is True and body["history_used"] is True
    assert "Hypertension" not in r.text and "aspirin" not in r.text and "cle-" not in r.text

    assert httpx.delete(patient, headers=cle).status_code == 204
    again = httpx.post(f"{base_url}/v1/diagnose", json=call, headers=cle, timeout=30).json()
    assert again["individual"]["history_items"] == 0
    assert again["individual"]["history"] == {"conditions": 0, "medications": 0, "encounters": 0}
    assert again["individual"]["history_stored"] is False and again["history_used"] is False
    assert len(again["individual"]["similar_cases"]) == 3  # the institution's, not the patient's

    lines = [
        x for x in read_audit(world.root / "audit" / "audit.jsonl") if x["route"] == "/v1/diagnose"
    ]
    assert [x["detail"]["individual"]["history_items"] for x in lines] == [2, 0]
    assert lines[0]["detail"]["individual"] == {
        "history_items": 2,
        "history_stored": True,
        "case_index": index_id,
        "similar_cases": 3,
        "prior_weight": 0.9,
    }
    text = (world.root / "audit" / "audit.jsonl").read_text()
    assert "Hypertension" not in text and "case#" not in text and LABEL not in text


def test_an_institution_unknown_to_the_registry_is_told_so(world: World, base_url: str) -> None:
    _register_index(world)
    url = f"{base_url}/v1/diagnose"
    hungary = httpx.post(url, json={"case": CASE}, headers=bearer(world.keys["hungary-inst"]))
    assert hungary.status_code == 200, hungary.text
    body = hungary.json()
    assert body["institution_known"] is False and body["chain"]["answering"] == world.ids["global"]
    assert body["individual"]["case_index"] is None and body["individual"]["similar_cases"] == []
    cle = httpx.post(url, json={"case": CASE}, headers=bearer(world.keys["cleveland"])).json()
    assert cle["institution_known"] is True
    [line] = [
        x
        for x in read_audit(world.root / "audit" / "audit.jsonl")
        if x["route"] == "/v1/diagnose" and x["institution"] == "hungary-inst"
    ]
    assert line["detail"]["institution_known"] is False


def test_an_unknown_institution_is_refused_when_nothing_verifies(
    world: World, make_client: Callable[..., Any]
) -> None:
    shutil.rmtree(world.registry.get(world.ids["global"]).path)
    client = make_client()
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["hungary-inst"]))
    assert r.status_code == 503, r.text  # fail closed: never the untuned base model
    assert r.json()["detail"].startswith("no adapter of this institution's chain verifies")


def test_the_cds_card_says_what_the_individual_level_used(world: World, ehr: Any) -> None:
    from .test_cds_hooks import REQUEST, searchset

    client, auth = ehr
    _register_index(world)
    client.app.state.service.embedder = BagEmbedder(VOCAB)
    r = client.post("/cds-services/feddx-differential", json=REQUEST, headers=auth())
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    assert "Patient history used: 1 item(s) (1 conditions)." in card["detail"]
    # The optional MedicationRequest prefetch adds the active medication to the history.
    with_meds = copy.deepcopy(REQUEST)
    with_meds["prefetch"]["medications"] = searchset(MEDICATION)
    r = client.post("/cds-services/feddx-differential", json=with_meds, headers=auth())
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    assert "Patient history used: 2 item(s) (1 conditions, 1 medications)." in card["detail"]
    assert "Lisinopril" not in r.text
    assert "Similar past cases of this institution: " in card["detail"]
    assert "retrieval prior weight 0.9, case-index/cleveland/v1" in card["detail"]
    assert "Hypertension" not in r.text
    lines = [
        x for x in read_audit(world.root / "audit" / "audit.jsonl") if x["route"].startswith("/cds")
    ]
    assert [x["detail"]["individual"]["history_items"] for x in lines] == [1, 2]
    assert all(x["detail"]["card"] for x in lines)


def test_an_index_the_service_cannot_query_is_left_out(
    world: World, make_client: Callable[..., Any]
) -> None:
    _register_index(world)
    client = make_client()  # no embedder named "bag-of-findings" can be loaded here
    r = client.post("/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 200, r.text
    ind = r.json()["individual"]
    assert ind["case_index"] is None and ind["similar_cases"] == [] and ind["prior_weight"] == 0.0


def test_models_names_the_case_index_and_whether_the_institution_is_known(
    world: World, make_client: Callable[..., Any]
) -> None:
    index_id = _register_index(world)
    client = make_client()
    cle = client.get("/v1/models", headers=bearer(world.keys["cleveland"])).json()
    assert cle["case_index"] == index_id and cle["institution_known"] is True
    assert index_id not in [a["id"] for a in cle["adapters"]]  # an index is not an adapter to pin
    hungary = client.get("/v1/models", headers=bearer(world.keys["hungary-inst"])).json()
    assert hungary["case_index"] is None and hungary["institution_known"] is False
