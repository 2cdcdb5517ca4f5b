"""CDS Hooks 2.0 conformance of the ``patient-view`` responses (issue 25 item 1): the
specification's rules for a response, its cards, sources, suggestions, actions, links and
codings, transcribed below into :func:`problems`; every patient of the Synthea bulk export sent
as prefetch gets 200 and one valid card; the CDS route's body limit holds the largest patient's
prefetch even when the EHR ignores ``_count``.

Rules (CDS Hooks 2.0, "CDS Service Response" and "Card Attributes"):

- R1 The response is an object with ``cards``, an array (REQUIRED; ``[]`` when there is no
  decision support), and optionally ``systemActions``, an array of Actions.
- R2 Optional fields without a value are omitted: no ``null``, no empty string, object or array
  anywhere (except the REQUIRED ``cards`` array, which may be empty).
- R3 Card: ``summary`` REQUIRED string, fewer than 140 characters; ``indicator`` REQUIRED, one of
  ``info``, ``warning``, ``critical``; ``source`` REQUIRED Source; ``uuid`` OPTIONAL string
  (ours: a UUID, echoed by feedback); ``detail`` OPTIONAL string (GitHub-flavoured markdown);
  ``suggestions`` OPTIONAL array of Suggestions, and if present ``selectionBehavior`` MUST be
  ``at-most-one`` or ``any``; ``overrideReasons`` OPTIONAL array of Codings, each with a
  ``display``; ``links`` OPTIONAL array of Links. No other attributes (extensions aside).
- R4 Source: ``label`` REQUIRED string; ``url`` and ``icon`` OPTIONAL absolute URLs; ``topic``
  OPTIONAL Coding.
- R5 Suggestion: ``label`` REQUIRED; ``uuid`` OPTIONAL string; ``isRecommended`` OPTIONAL
  boolean; ``actions`` OPTIONAL array of Actions. With ``selectionBehavior`` ``at-most-one`` at
  most one suggestion is recommended.
- R6 Action: ``type`` REQUIRED, ``create``, ``update`` or ``delete``; ``description`` REQUIRED
  (optional in a systemAction); ``resource`` REQUIRED for create and update; ``resourceId``
  for delete.
- R7 Link: ``label`` REQUIRED; ``url`` REQUIRED absolute URL; ``type`` REQUIRED, ``absolute`` or
  ``smart``; ``appContext`` OPTIONAL, only with ``smart``; ``autolaunchable`` OPTIONAL boolean.
- R8 Coding: ``code`` and ``system`` REQUIRED strings; ``display`` OPTIONAL string (REQUIRED in
  ``overrideReasons``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from feddx.serve.prefetch import CDS_MAX_BODY_BYTES, bulk_prefetches

from .conftest import CDS_URL

_CARD_KEYS = {
    "uuid",
    "summary",
    "detail",
    "indicator",
    "source",
    "suggestions",
    "selectionBehavior",
    "overrideReasons",
    "links",
    "extension",
}


def _absolute(url: Any) -> bool:
    parts = urlsplit(url) if isinstance(url, str) else None
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def _empty_values(value: Any, at: str) -> list[str]:
    """R2: every null or empty value below ``at``."""
    if value is None or value in ("", {}, []):
        return [f"{at}: null or empty"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _empty_values(v, f"{at}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _empty_values(v, f"{at}[{i}]")]
    return []


def _coding(c: Any, at: str, *, display: bool = False) -> list[str]:
    """R8."""
    if not isinstance(c, dict):
        return [f"{at}: not an object"]
    out = [
        f"{at}.{k}: REQUIRED string" for k in ("code", "system") if not isinstance(c.get(k), str)
    ]
    if display and not isinstance(c.get("display"), str):
        out.append(f"{at}.display: REQUIRED in overrideReasons")
    return out


def _action(a: Any, at: str, *, system: bool = False) -> list[str]:
    """R6."""
    if not isinstance(a, dict) or a.get("type") not in ("create", "update", "delete"):
        return [f"{at}.type: create, update or delete"]
    out = []
    if not system and not isinstance(a.get("description"), str):
        out.append(f"{at}.description: REQUIRED")
    if a["type"] in ("create", "update") and not isinstance(a.get("resource"), dict):
        out.append(f"{at}.resource: REQUIRED for {a['type']}")
    if a["type"] == "delete" and not isinstance(a.get("resourceId"), str):
        out.append(f"{at}.resourceId: expected for delete")
    return out


def _card(card: Any, at: str) -> list[str]:
    """R3-R7 for one card."""
    if not isinstance(card, dict):
        return [f"{at}: not an object"]
    out = [f"{at}.{k}: not a card attribute" for k in set(card) - _CARD_KEYS]
    summary = card.get("summary")
    if not isinstance(summary, str) or len(summary) >= 140:
        out.append(f"{at}.summary: REQUIRED, fewer than 140 characters")
    if card.get("indicator") not in ("info", "warning", "critical"):
        out.append(f"{at}.indicator: info, warning or critical")
    if "uuid" in card:
        try:
            uuid.UUID(card["uuid"])
        except (ValueError, TypeError, AttributeError):
            out.append(f"{at}.uuid: not a UUID")
    if "detail" in card and not isinstance(card["detail"], str):
        out.append(f"{at}.detail: a markdown string")
    source = card.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("label"), str):
        out.append(f"{at}.source.label: REQUIRED")
    else:
        out += [
            f"{at}.source.{k}: absolute URL"
            for k in ("url", "icon")
            if k in source and not _absolute(source[k])
        ]
        if "topic" in source:
            out += _coding(source["topic"], f"{at}.source.topic")
    suggestions = card.get("suggestions")
    if suggestions is not None:
        behaviour = card.get("selectionBehavior")
        if behaviour not in ("at-most-one", "any"):
            out.append(f"{at}.selectionBehavior: REQUIRED with suggestions")
        recommended = 0
        for i, s in enumerate(suggestions):
            where = f"{at}.suggestions[{i}]"
            if not isinstance(s, dict) or not isinstance(s.get("label"), str):
                out.append(f"{where}.label: REQUIRED")
                continue
            if "isRecommended" in s and not isinstance(s["isRecommended"], bool):
                out.append(f"{where}.isRecommended: boolean")
            recommended += s.get("isRecommended") is True
            for j, a in enumerate(s.get("actions", [])):
                out += _action(a, f"{where}.actions[{j}]")
        if behaviour == "at-most-one" and recommended > 1:
            out.append(f"{at}: at-most-one with {recommended} recommended suggestions")
    for i, c in enumerate(card.get("overrideReasons", [])):
        out += _coding(c, f"{at}.overrideReasons[{i}]", display=True)
    for i, link in enumerate(card.get("links", [])):
        where = f"{at}.links[{i}]"
        if not isinstance(link, dict) or not isinstance(link.get("label"), str):
            out.append(f"{where}.label: REQUIRED")
            continue
        if not _absolute(link.get("url")):
            out.append(f"{where}.url: REQUIRED absolute URL")
        if link.get("type") not in ("absolute", "smart"):
            out.append(f"{where}.type: absolute or smart")
        if "appContext" in link and link.get("type") != "smart":
            out.append(f"{where}.appContext: only with smart links")
    return out


def problems(body: Any) -> list[str]:
    """Every way ``body`` breaks rules R1-R8 (empty: conformant)."""
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["cards: REQUIRED array"]
    out = [f"{k}: not a response attribute" for k in set(body) - {"cards", "systemActions"}]
    for key, value in body.items():
        out += _empty_values(value or ([0] if key == "cards" else value), key)
    for i, card in enumerate(body["cards"]):
        out += _card(card, f"cards[{i}]")
    for i, a in enumerate(body.get("systemActions", [])):
        out += _action(a, f"systemActions[{i}]", system=True)
    return out


def test_the_rules_catch_what_they_transcribe() -> None:
    good = {
        "cards": [
            {
                "uuid": str(uuid.uuid4()),
                "summary": "Most likely: X",
                "indicator": "info",
                "source": {"label": "feddx"},
                "suggestions": [{"label": "a", "isRecommended": True}],
                "selectionBehavior": "at-most-one",
                "links": [{"label": "l", "url": "https://x.example/a", "type": "absolute"}],
            }
        ]
    }
    assert problems(good) == [] and problems({"cards": []}) == []
    bad = json.loads(json.dumps(good))
    card = bad["cards"][0]
    card["source"] |= {"url": None, "topic": {"code": "x"}}
    card["summary"] = "x" * 140
    card["indicator"] = "urgent"
    del card["selectionBehavior"]
    card["overrideReasons"] = [{"code": "c", "system": "s"}]
    card["links"][0] |= {"type": "absolute", "appContext": "{}"}
    card["suggestions"][0]["actions"] = [{"type": "create", "description": "d"}]
    card["detail"] = ""
    found = " | ".join(problems(bad))
    for rule in (
        "cards[0].source.url: null or empty",
        "summary: REQUIRED, fewer than 140",
        "indicator: info, warning or critical",
        "selectionBehavior: REQUIRED with suggestions",
        "overrideReasons[0].display: REQUIRED",
        "source.topic.system: REQUIRED",
        "appContext: only with smart",
        "actions[0].resource: REQUIRED for create",
        "cards[0].detail: null or empty",
    ):
        assert rule in found, rule


@pytest.fixture(scope="module")
def synthea(shared_data: Path) -> Path:
    path = shared_data / "fhir" / "synthea_bulk_10_patients"
    if not path.is_dir():
        pytest.skip(f"Synthea FHIR sample not found at {path}")
    return path


def _hook(patient_id: str, prefetch: dict[str, Any]) -> dict[str, Any]:
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": prefetch,
    }


def test_every_synthea_patient_gets_one_valid_card(ehr: Any, synthea: Path) -> None:
    client, auth = ehr
    seen = 0
    for patient_id, prefetch in bulk_prefetches(synthea):
        r = client.post(
            "/cds-services/feddx-differential", json=_hook(patient_id, prefetch), headers=auth()
        )
        assert r.status_code == 200, (patient_id[:8], r.text[:300])
        assert problems(r.json()) == [], patient_id[:8]
        assert len(r.json()["cards"]) == 1, patient_id[:8]
        seen += 1
    assert seen >= 5


def test_the_largest_unbounded_prefetch_fits_the_cds_limit(ehr: Any, synthea: Path) -> None:
    client, auth = ehr
    sized = [
        (len(json.dumps(_hook(p, f)).encode()), p, f)
        for p, f in bulk_prefetches(synthea, bounded=False)
    ]
    size, patient_id, prefetch = max(sized, key=lambda s: s[0])
    # Above the general 1 MiB limit (where one patient got 413), within the CDS route's own.
    assert 1 << 20 < size < CDS_MAX_BODY_BYTES / 2
    r = client.post(
        "/cds-services/feddx-differential", json=_hook(patient_id, prefetch), headers=auth()
    )
    assert r.status_code == 200 and problems(r.json()) == []
    r = client.post("/v1/diagnose", content=b"x" * size, headers=auth(CDS_URL))
    assert r.status_code == 413  # the other routes keep max_body_bytes
