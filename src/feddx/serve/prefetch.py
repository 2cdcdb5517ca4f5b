"""The ``patient-view`` service's prefetch templates, the bounds they put on what an EHR sends,
and an EHR's side of them over a FHIR bulk export (what the conformance test and the size
measurement send).

CDS Hooks 2.0 restricts prefetch queries to instance reads, type searches by reference,
token equality, date prefixes, ``_count`` and ``_sort``; it has no relative date (no "the last
year"), so the bound on what arrives is a count of the most recent resources of each kind:

========================  ==========================================================
key                       template
========================  ==========================================================
``patient``               ``Patient/{{context.patientId}}``
``conditions``            ``Condition?patient=...&_sort=-recorded-date&_count=100``
``observations``          ``Observation?patient=...&_sort=-date&_count=100``
``encounters``            ``Encounter?patient=...&_sort=-date&_count=20``
``medications``           ``MedicationRequest?patient=...&_sort=-authoredon&_count=50``
========================  ==========================================================

``medications`` is optional (:data:`OPTIONAL`): an EHR configured before it was added, or one
that cannot search MedicationRequests, still gets a card, from the other keys; when it is sent,
the active medications (authored before the encounter, within the FHIR loader's window) join
the patient's history in the prompt.

The case is built at the most recent Encounter with up to 20 earlier ones as history, so 20
Encounters are all the scorer can use; the prompt is cut to the adapter's token budget anyway.
An EHR that ignores ``_count`` still fits under the CDS route's body limit
(``cds_max_body_bytes``, 8 MiB), which was sized from the largest patient of the Synthea export
in ``results/cds-prefetch.txt`` (its unbounded prefetch: 1.51 MB without MedicationRequests,
2.81 MB with them, measured by ``tests/serve/test_cds_conformance.py``; 4 MiB before the
MedicationRequest template was added).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PrefetchItem:
    """One prefetch key: the resource type, its search, and how many resources it asks for
    (``None``: one resource read by id)."""

    resource_type: str
    query: str
    count: int | None = None
    sort_by: tuple[str, ...] = ()  # fields, most specific first, whose latest value sorts

    @property
    def template(self) -> str:
        if self.count is None:
            return self.query
        return f"{self.query}&_count={self.count}"


_PATIENT = "{{context.patientId}}"
ITEMS: dict[str, PrefetchItem] = {
    "patient": PrefetchItem("Patient", f"Patient/{_PATIENT}"),
    "conditions": PrefetchItem(
        "Condition",
        f"Condition?patient={_PATIENT}&_sort=-recorded-date",
        100,
        ("recordedDate", "onsetDateTime"),
    ),
    "observations": PrefetchItem(
        "Observation",
        f"Observation?patient={_PATIENT}&_sort=-date",
        100,
        ("effectiveDateTime", "issued"),
    ),
    "encounters": PrefetchItem(
        "Encounter", f"Encounter?patient={_PATIENT}&_sort=-date", 20, ("period.start",)
    ),
    "medications": PrefetchItem(
        "MedicationRequest",
        f"MedicationRequest?patient={_PATIENT}&_sort=-authoredon",
        50,
        ("authoredOn",),
    ),
}
OPTIONAL = frozenset({"medications"})
"""Prefetch keys a hook call may lack (no 412): the card is built from the others."""
PREFETCH = {key: item.template for key, item in ITEMS.items()}
PREFETCH_TYPES = {key: item.resource_type for key, item in ITEMS.items()}
CDS_MAX_BODY_BYTES = 8 << 20


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR searchset Bundle of ``resources`` (what a prefetch search returns)."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"urn:uuid:{r.get('id', i)}", "resource": r}
            for i, r in enumerate(resources)
        ],
    }


def _latest(resource: dict[str, Any], fields: tuple[str, ...]) -> str:
    for name in fields:
        value: Any = resource
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return ""


def read_bulk(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """A bulk export's ``Patient``, ``Condition``, ``Observation``, ``Encounter`` and
    ``MedicationRequest`` NDJSON files (``<Type>.*.ndjson``) by patient id, then resource type. Missing types are empty."""
    by_patient: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rtype in {item.resource_type for item in ITEMS.values()}:
        for path in sorted(Path(folder).glob(f"{rtype}.*.ndjson")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    res = json.loads(line)
                    ref = res.get("id") if rtype == "Patient" else _subject(res)
                    if ref:
                        by_patient[ref][rtype].append(res)
    return {p: dict(v) for p, v in by_patient.items() if v.get("Patient")}


def _subject(resource: dict[str, Any]) -> str | None:
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref.removeprefix("Patient/").removeprefix("urn:uuid:") or None


def prefetch_for(
    records: dict[str, list[dict[str, Any]]], *, bounded: bool = True
) -> dict[str, Any]:
    """The prefetch an EHR sends for one patient's ``records`` (from :func:`read_bulk`):
    each search sorted newest first and cut to its ``_count`` (``bounded=False``: everything,
    as an EHR that ignores ``_count`` would send)."""
    out: dict[str, Any] = {}
    for key, item in ITEMS.items():
        found = list(records.get(item.resource_type, []))
        if item.count is None:
            out[key] = found[0]
            continue
        found.sort(key=lambda r: _latest(r, item.sort_by), reverse=True)
        out[key] = searchset(found[: item.count] if bounded else found)
    return out


def bulk_prefetches(folder: Path, *, bounded: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(patient id, prefetch)`` for every patient of a bulk export (see :func:`prefetch_for`)."""
    for patient_id, records in sorted(read_bulk(folder).items()):
        yield patient_id, prefetch_for(records, bounded=bounded)
