"""CDS Hooks 2.0 conformance of the patient-view service: discovery, a card from the prefetch,
no cards when there is nothing to say, 412 without the prefetch, feedback in the audit log."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from feddx.serve.audit import read_audit
from feddx.serve.routes.cds_hooks import OVERRIDE_SYSTEM

from .conftest import CDS_BASE as BASE
from .conftest import CDS_URL as URL
from .conftest import bearer
from .world import World


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


UNKNOWN_CARD = "7b0e1a52-30c5-4a8e-9a4c-2f1d8f0f6a11"
PATIENT = {"resourceType": "Patient", "id": "pt-1", "gender": "male", "birthDate": "1961-03-05"}
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/pt-1"},
    "period": {"start": "2026-11-30T09:00:00Z"},
}
CONDITION = {
    "resourceType": "Condition",
    "id": "c-1",
    "subject": {"reference": "Patient/pt-1"},
    "code": {"text": "Hypertension"},
    "onsetDateTime": "2019-01-01",
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o-1",
    "status": "final",
    "code": {"text": "resting BP"},
    "subject": {"reference": "Patient/pt-1"},
    "encounter": {"reference": "Encounter/enc-1"},
    "effectiveDateTime": "2026-11-30T09:10:00Z",
    "valueQuantity": {"value": 160, "unit": "mmHg"},
}
REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "https://ehr.example.org/fhir",
    "hook": "patient-view",
    "context": {"userId": "Practitioner/example", "patientId": "pt-1"},
    "prefetch": {
        "patient": PATIENT,
        "conditions": searchset(CONDITION),
        "observations": searchset(OBSERVATION),
        "encounters": searchset(ENCOUNTER),
    },
}


def test_discovery_follows_the_specification(ehr: Any) -> None:
    client, auth = ehr
    r = client.get("/cds-services", headers=auth(f"{BASE}/cds-services"))
    assert r.status_code == 200
    [service] = r.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == "feddx-differential"
    assert service["title"] and service["description"]
    # Bounded by count and sorted newest first (CDS Hooks 2.0 allows _count and _sort).
    assert service["prefetch"] == {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}&_sort=-recorded-date&_count=100",
        "observations": "Observation?patient={{context.patientId}}&_sort=-date&_count=100",
        "encounters": "Encounter?patient={{context.patientId}}&_sort=-date&_count=20",
        "medications": (
            "MedicationRequest?patient={{context.patientId}}&_sort=-authoredon&_count=50"
        ),
    }
    assert client.get("/cds-services").status_code == 401


def test_patient_view_answers_one_card_with_the_top_diagnoses(ehr: Any, world: World) -> None:
    client, auth = ehr
    r = client.post("/cds-services/feddx-differential", json=REQUEST, headers=auth())
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    assert set(card) == {"uuid", "summary", "detail", "indicator", "source", "overrideReasons"}
    assert card["indicator"] in ("info", "warning", "critical")
    assert len(card["summary"]) <= 140 and card["summary"].startswith("Most likely: ")
    assert card["source"]["label"] == "feddx (institutional/cleveland/v1)"
    # The detail is a markdown table of the differential with ICD-10 codes, and the chain.
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 5 and all(("I25.10" in x or "Z03.89" in x) for x in rows)
    top = rows[0].split(" | ")[0].removeprefix("| ")
    assert card["summary"].startswith(f"Most likely: {top} (")
    assert "global/v1 → regional/usa/v1 → institutional/cleveland/v1" in card["detail"]
    assert "Hypertension" not in r.text and "pt-1" not in r.text
    [line] = [
        x
        for x in read_audit(world.root / "audit" / "audit.jsonl")
        if x["route"] == "/cds-services/{service_id}"
    ]
    assert line["subject"] == "ehr:https://ehr.example.org" and line["institution"] == "cleveland"
    assert (
        line["answering"] == "institutional/cleveland/v1" and line["detail"]["card"] == card["uuid"]
    )
    assert line["patient_ref"] and "pt-1" not in str(line)


def test_card_matches_v1_diagnose_on_the_same_record(ehr: Any, world: World) -> None:
    client, auth = ehr
    [card] = client.post("/cds-services/feddx-differential", json=REQUEST, headers=auth()).json()[
        "cards"
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in (PATIENT, ENCOUNTER, CONDITION, OBSERVATION)],
    }
    r = client.post("/v1/diagnose", json={"fhir": bundle}, headers=bearer(world.keys["cleveland"]))
    top = r.json()["differential"][0]
    assert (
        card["summary"] == f"Most likely: {top['name']} ({top['icd10']}), {top['probability']:.0%}"
    )


def test_no_clinical_data_means_no_cards(ehr: Any) -> None:
    client, auth = ehr
    req = copy.deepcopy(REQUEST)
    req["prefetch"] |= {
        "conditions": searchset(),
        "observations": searchset(),
        "encounters": searchset(),
    }
    r = client.post("/cds-services/feddx-differential", json=req, headers=auth())
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_missing_prefetch_is_412(ehr: Any, world: World) -> None:
    client, auth = ehr
    for missing in ("patient", "observations"):
        req = copy.deepcopy(REQUEST)
        if missing == "patient":
            req["prefetch"][missing] = None  # the EHR could not fetch it
        else:
            del req["prefetch"][missing]
        r = client.post("/cds-services/feddx-differential", json=req, headers=auth())
        assert r.status_code == 412 and missing in r.json()["detail"]
    req = copy.deepcopy(REQUEST)
    del req["prefetch"]
    assert (
        client.post("/cds-services/feddx-differential", json=req, headers=auth()).status_code == 412
    )
    outcomes = [x["outcome"] for x in read_audit(world.root / "audit" / "audit.jsonl")]
    assert outcomes == ["refused: prefetch missing"] * 3


def test_wrong_service_hook_or_patient_is_refused(ehr: Any) -> None:
    client, auth = ehr
    r = client.post("/cds-services/other", json=REQUEST, headers=auth(f"{BASE}/cds-services/other"))
    assert r.status_code == 404
    req = copy.deepcopy(REQUEST) | {"hook": "order-select"}
    assert (
        client.post("/cds-services/feddx-differential", json=req, headers=auth()).status_code == 400
    )
    req = copy.deepcopy(REQUEST)
    req["context"]["patientId"] = "someone-else"
    assert (
        client.post("/cds-services/feddx-differential", json=req, headers=auth()).status_code == 422
    )
    req = copy.deepcopy(REQUEST)
    del req["context"]["patientId"]
    r = client.post("/cds-services/feddx-differential", json=req, headers=auth())
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "context", "patientId"]


def test_feedback_is_recorded_in_the_audit_log(ehr: Any, world: World) -> None:
    client, auth = ehr
    [card] = client.post("/cds-services/feddx-differential", json=REQUEST, headers=auth()).json()[
        "cards"
    ]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "disagree-ranking", "system": OVERRIDE_SYSTEM},
                    "userComment": "Mr Smith SECRET disagrees",
                },
                "outcomeTimestamp": "2026-12-01T10:00:00Z",
            },
            {
                "card": UNKNOWN_CARD,
                "outcome": "accepted",
                "outcomeTimestamp": "2026-12-01T10:01:00Z",
            },
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "SECRET-made-up", "system": "urn:x"}},
                "outcomeTimestamp": "2026-12-01T10:02:00Z",
            },
        ]
    }
    r = client.post(
        "/cds-services/feddx-differential/feedback", json=feedback, headers=auth(f"{URL}/feedback")
    )
    assert r.status_code == 200
    line = read_audit(world.root / "audit" / "audit.jsonl")[-1]
    assert (
        line["route"] == "/cds-services/{service_id}/feedback" and line["outcome"] == "ok: feedback"
    )
    assert line["detail"]["feedback"] == [
        {
            "card": card["uuid"],
            "outcome": "overridden",
            "known_card": True,
            "override_reason": "disagree-ranking",
            "accepted_suggestions": 0,
        },
        {
            "card": UNKNOWN_CARD,
            "outcome": "accepted",
            "known_card": False,
            "override_reason": None,
            "accepted_suggestions": 0,
        },
        {
            "card": card["uuid"],
            "outcome": "overridden",
            "known_card": True,
            "override_reason": "unlisted",
            "accepted_suggestions": 0,
        },
    ]
    assert "SECRET" not in (world.root / "audit" / "audit.jsonl").read_text()
    bad = client.post(
        "/cds-services/feddx-differential/feedback",
        json={"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "t"}]},
        headers=auth(f"{URL}/feedback"),
    )
    locs = [e["loc"][-1] for e in bad.json()["detail"]]
    assert bad.status_code == 422 and locs == ["card", "outcome"]  # card: not a UUID


def test_cds_max_prompt_tokens_caps_the_hooks_prompts_only(
    world: World, make_client: Callable[..., Any]
) -> None:
    """``cds_max_prompt_tokens`` bounds the hook's prompt (a chart fills any budget), while
    ``/v1/diagnose`` keeps the adapter's own."""
    from feddx.serve.security import KeyStore

    from .test_security import ec_keypair, make_jwt

    private, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    client = make_client(public_url=BASE, cds_max_prompt_tokens=40)
    diagnoser = client.app.state.service.scheduler.pool.diagnoser
    budgets: list[int | None] = []
    real = diagnoser.diagnose

    def diagnose(cases: Any, candidates: Any, **kw: Any) -> Any:
        budgets.append(kw.get("max_prompt_tokens"))
        return real(cases, candidates, **kw)

    diagnoser.diagnose = diagnose
    hook = client.post(
        "/cds-services/feddx-differential",
        json=REQUEST,
        headers=bearer(make_jwt(private, aud=URL)),
    )
    assert hook.status_code == 200 and len(hook.json()["cards"]) == 1
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in (PATIENT, ENCOUNTER, CONDITION, OBSERVATION)],
    }
    r = client.post("/v1/diagnose", json={"fhir": bundle}, headers=bearer(world.keys["cleveland"]))
    assert r.status_code == 200
    assert budgets == [40, None]
