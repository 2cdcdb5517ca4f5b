"""Nothing a caller sent is kept or echoed as text (issue 25 item 4): a name and a CPF planted in
every field of every request reach neither a reply nor the audit log; stored histories are
encrypted (AES-GCM, key from the environment), 0600, named by keyed HMACs; ``/docs`` is off."""

from __future__ import annotations

import copy
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feddx.errors import ConfigError, DataError
from feddx.serve.history import HistoryStore

from .conftest import CDS_BASE, CDS_URL, HISTORY_KEY, bearer
from .test_cds_hooks import CONDITION, ENCOUNTER, OBSERVATION, PATIENT, REQUEST, searchset
from .world import CASE, World

NAME = "Maria Aparecida Quixaba"
CPF = "123.456.789-09"
PLANT = f"{NAME} CPF {CPF}"
ID_PLANT = "Maria.Aparecida.Quixaba-12345678909"  # fits the patient-id and adapter-id patterns
KEY_PLANT = "MariaAparecidaQuixaba12345678909"  # as a JSON key
TELLTALES = ("Maria", "Aparecida", "Quixaba", "123.456.789", "12345678909")


def _clean(text: str, where: str) -> None:
    found = [t for t in TELLTALES if t in text]
    assert not found, f"{where} holds {found}"


def _planted_case() -> dict[str, Any]:
    return {
        "case_id": PLANT,
        "age": 40,
        "sex": "female",
        "text": f"Patient {PLANT} reports chest pain",
        "findings": [
            {"name": f"chest pain ({NAME})", "value": PLANT},
            {"name": "resting BP", "value": 150, "unit": CPF},
        ],
        "history": {"prior_conditions": [PLANT], "medications": [NAME]},
    }


def _planted_prefetch() -> dict[str, Any]:
    patient = PATIENT | {
        "name": [{"family": "Quixaba", "given": ["Maria", "Aparecida"]}],
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.13.237", "value": CPF}],
    }
    condition = CONDITION | {"code": {"text": PLANT}}
    observation = OBSERVATION | {"code": {"text": f"BP of {NAME}"}}
    return {
        "patient": patient,
        "conditions": searchset(condition),
        "observations": searchset(observation),
        "encounters": searchset(ENCOUNTER),
        KEY_PLANT: {"resourceType": "Patient", "id": CPF},
    }


def _requests(world: World, auth: Callable[..., dict[str, str]]) -> list[tuple[str, str, Any, Any]]:
    """(method, path, json, headers) of every route, with the plant in every field."""
    cle = bearer(world.keys["cleveland"])
    hook = copy.deepcopy(REQUEST) | {"prefetch": _planted_prefetch()}
    hook["context"] |= {"userId": f"Practitioner/{ID_PLANT}", "encounterId": PLANT}
    hook["fhirServer"] = f"https://ehr.example.org/{ID_PLANT}"
    bad_hook = copy.deepcopy(hook) | {"hookInstance": PLANT, KEY_PLANT: PLANT}
    bad_bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": PATIENT | {KEY_PLANT: PLANT}}],
    }
    feedback = {
        "feedback": [
            {
                "card": "0b5a1c8e-1d7f-4a56-9f0e-6a3c2b1d9e77",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": PLANT, "system": f"urn:{ID_PLANT}", "display": NAME},
                    "userComment": PLANT,
                },
                "acceptedSuggestions": [{"id": PLANT}],
                "outcomeTimestamp": PLANT,
                KEY_PLANT: PLANT,
            }
        ]
    }
    bad_feedback = copy.deepcopy(feedback)
    bad_feedback["feedback"][0]["card"] = PLANT
    history = {"prior_conditions": [PLANT], "medications": [NAME]}
    url = "/cds-services/feddx-differential"
    return [
        ("POST", "/v1/diagnose", {"case": _planted_case(), "patient_id": ID_PLANT}, cle),
        ("POST", "/v1/diagnose", {"case": CASE, "adapter": f"global/{ID_PLANT}"}, cle),
        ("POST", "/v1/diagnose", {"case": CASE, "candidates": [PLANT, NAME]}, cle),
        ("POST", "/v1/diagnose", {"case": CASE, KEY_PLANT: PLANT}, cle),
        ("POST", "/v1/diagnose", {"case": _planted_case() | {KEY_PLANT: 1}}, cle),
        ("POST", "/v1/diagnose", {"fhir": bad_bundle}, cle),
        ("POST", "/v1/diagnose", {"case": CASE, "patient_id": PLANT}, cle),
        ("PUT", f"/v1/patients/{ID_PLANT}/history", history, cle),
        ("PUT", f"/v1/patients/{ID_PLANT}/history", history | {KEY_PLANT: PLANT}, cle),
        ("GET", f"/v1/patients/{ID_PLANT}/history", None, cle),
        ("POST", "/v1/diagnose", {"case": CASE, "patient_id": ID_PLANT}, cle),
        ("DELETE", f"/v1/patients/{ID_PLANT}/history", None, cle),
        ("GET", f"/v1/patients/{ID_PLANT}/history", None, cle),
        ("GET", "/v1/models", None, bearer(f"fdx_{KEY_PLANT}_{CPF}")),
        ("POST", url, hook, auth(CDS_URL)),
        ("POST", url, bad_hook, auth(CDS_URL)),
        ("POST", f"/cds-services/{ID_PLANT}", hook, auth(f"{CDS_BASE}/cds-services/{ID_PLANT}")),
        ("POST", f"{url}/feedback", feedback, auth(f"{CDS_URL}/feedback")),
        ("POST", f"{url}/feedback", bad_feedback, auth(f"{CDS_URL}/feedback")),
    ]


def test_planted_names_and_cpfs_reach_no_reply_and_no_audit_line(ehr: Any, world: World) -> None:
    client, auth = ehr
    codes = []
    for method, path, body, headers in _requests(world, auth):
        r = client.request(method, path, json=body, headers=headers)
        codes.append(r.status_code)
        if method == "GET" and r.status_code == 200 and path.endswith("/history"):
            # The one reply whose contract is to return data: the institution's own stored
            # history, which it sent to be stored.
            assert r.json()["prior_conditions"] == [PLANT]
            continue
        _clean(r.text, f"the reply to {method} {path} ({r.status_code})")
        _clean(str(r.headers), f"the headers of the reply to {method} {path}")
    # The requests were answered (not merely refused before they were read) ...
    assert codes[:14] == [200, 404, 503, 422, 422, 422, 422, 204, 422, 200, 200, 204, 404, 401]
    assert codes[14:] == [200, 422, 404, 200, 422]
    # ... and the audit log has one line per request, none with the caller's text.
    audit = world.root / "audit" / "audit.jsonl"
    assert len(audit.read_text().splitlines()) == len(codes)
    _clean(audit.read_text(), "the audit log")


def test_stored_histories_are_encrypted_0600_and_named_by_keyed_hmacs(
    make_client: Callable[..., Any], world: World
) -> None:
    client = make_client()
    history = {"prior_conditions": [PLANT], "medications": [NAME]}
    r = client.put(
        f"/v1/patients/{ID_PLANT}/history", json=history, headers=bearer(world.keys["cleveland"])
    )
    assert r.status_code == 204
    [path] = [p for p in (world.root / "histories").rglob("*") if p.is_file()]
    _clean(path.read_bytes().decode("latin-1"), "the stored file")
    unkeyed = hashlib.sha256(f"cleveland\x00{ID_PLANT}".encode()).hexdigest()
    assert unkeyed not in str(path) and hashlib.sha256(b"cleveland").hexdigest()[:32] not in str(
        path
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    # Another key neither finds it (names are keyed) nor decrypts it (content is sealed).
    other = HistoryStore(world.root / "histories", bytes(32))
    assert other.get("cleveland", ID_PLANT) is None
    same = HistoryStore(world.root / "histories", bytes.fromhex(HISTORY_KEY))
    assert same.get("cleveland", ID_PLANT) is not None
    (other.root / path.parent.name / path.name).write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="does not decrypt"):
        same.get("cleveland", ID_PLANT)


def test_histories_are_not_stored_without_a_key(
    make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from feddx.serve.app import create_app

    monkeypatch.delenv("FEDDX_HISTORY_KEY")
    with pytest.raises(ConfigError, match="history_dir is set but FEDDX_HISTORY_KEY is not"):
        create_app(make_settings())
    monkeypatch.setenv("FEDDX_HISTORY_KEY", "too-short")
    with pytest.raises(ConfigError, match="must be 32 bytes"):
        create_app(make_settings())
    create_app(make_settings(history_dir=None))  # no histories, no key needed


def test_api_docs_are_off_by_default(make_client: Callable[..., Any]) -> None:
    client = make_client()
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    assert make_client(api_docs=True).get("/docs").status_code == 200
