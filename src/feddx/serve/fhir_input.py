"""FHIR R4 input (a request's Bundle, a CDS Hooks prefetch) into one :class:`Case`.

The conversion is :func:`feddx.data.fhir.load_fhir`'s, unchanged: the service builds the case
exactly as ``feddx data prepare fhir`` builds training cases (findings, notes cut before the
assessment, history from earlier encounters), so the model sees what it was trained on. The
loader reads paths, so the Bundle is handed to it through an anonymous in-memory file
(``memfd_create``): request data never touches a disk. The Bundle is written one entry per
line, so the loader's line numbers map back to ``Bundle.entry[i]`` in error messages.

The case is the patient's most recent dated Encounter. A CDS Hooks ``patient-view`` prefetch
without any Encounter gets a synthetic one spanning its Observations, so a patient in view is
diagnosed from what was observed. Errors name the entry, resource type and field, never a value.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feddx.data.schema import Case
from feddx.errors import FeddxError

# The loader's reasons that mean the input itself is malformed (others, such as an undated
# encounter or a dangling reference, are tolerated as the loader tolerates them in files).
_MALFORMED = {"invalid JSON", "wrong resourceType", "invalid resource"}
_SAFE_MSG = re.compile(
    r"^(Field required|Extra inputs are not permitted|Input should be [A-Za-z ,]+|"
    r"String should [A-Za-z ]+|Value should [A-Za-z ]+|List should [A-Za-z ]+)$"
)
_HEADER_LINES = 1


class FhirInputError(FeddxError):
    """The FHIR input cannot become a case; ``problems`` lists each entry and field at fault
    as ``(loc, message)`` (HTTP 422)."""

    def __init__(self, problems: list[tuple[list[str | int], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in problems))


def case_from_bundle(
    bundle: Mapping[str, Any],
    *,
    loc: tuple[str | int, ...] = ("body", "fhir"),
    deidentify: bool = False,
    synthesize_encounter: bool = False,
) -> Case:
    """The case of ``bundle`` (a FHIR R4 Bundle of one patient) at its latest Encounter.

    Raises :class:`FhirInputError` naming the entry and field for a malformed resource, a
    Bundle of several patients or none, or no dated Encounter (unless
    ``synthesize_encounter``).
    """
    entries = _entries(bundle, loc)
    resources = [e["resource"] for e in entries]
    if synthesize_encounter and not any(r.get("resourceType") == "Encounter" for r in resources):
        encounter = _synthetic_encounter(resources)
        if encounter is not None:
            resources.append(encounter)
    cases, skipped = _load(resources, deidentify)
    problems: list[tuple[list[str | int], str]] = []
    for rec in skipped:
        if rec.reason not in _MALFORMED:
            continue
        index = (rec.line or 0) - 1 - _HEADER_LINES
        where: list[str | int] = [*loc, "entry", index] if 0 <= index < len(resources) else [*loc]
        problems.append((where, _describe(rec.reason, rec.detail)))
    if problems:
        raise FhirInputError(problems)
    patients = {c.patient_id for c in cases}
    if len(patients) > 1:
        raise FhirInputError([([*loc], f"the Bundle holds {len(patients)} patients; send one")])
    if not cases:
        raise FhirInputError(
            [([*loc], "no case: the Bundle needs a Patient and a dated Encounter of that patient")]
        )
    latest = max(enumerate(cases), key=lambda ic: (ic[1].date or dt.date.min, ic[0]))[1]
    return latest.model_copy(update={"label": None})


def case_from_prefetch(
    prefetch: Mapping[str, Any], keys: Mapping[str, str], *, deidentify: bool = False
) -> Case:
    """The case of a CDS Hooks prefetch: ``keys`` maps each prefetch key to the resource type
    it holds (``{"patient": "Patient", "conditions": "Condition", ...}``); values are a
    resource or a searchset Bundle of them."""
    resources: list[dict[str, Any]] = []
    for key in keys:
        value = prefetch.get(key)
        if not isinstance(value, Mapping):
            continue
        if value.get("resourceType") == "Bundle":
            for i, entry in enumerate(value.get("entry") or []):
                res = entry.get("resource") if isinstance(entry, Mapping) else None
                if not isinstance(res, Mapping):
                    raise FhirInputError(
                        [(["body", "prefetch", key, "entry", i], "entry without a resource")]
                    )
                if res.get("resourceType") != "OperationOutcome":  # search warnings
                    resources.append(dict(res))
        else:
            resources.append(dict(value))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    return case_from_bundle(
        bundle, loc=("body", "prefetch"), deidentify=deidentify, synthesize_encounter=True
    )


def _entries(bundle: Mapping[str, Any], loc: tuple[str | int, ...]) -> list[dict[str, Any]]:
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise FhirInputError([([*loc, "resourceType"], "must be 'Bundle'")])
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise FhirInputError([([*loc, "entry"], "must be a non-empty list of entries")])
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping) or not isinstance(e.get("resource"), Mapping):
            raise FhirInputError([([*loc, "entry", i, "resource"], "must be a resource object")])
    return [dict(e) for e in entries]


def _load(resources: list[dict[str, Any]], deidentify: bool) -> tuple[list[Case], list[Any]]:
    from feddx.data.fhir import FHIRLoadOptions, load_fhir
    from feddx.data.report import LoadReport

    lines = [
        '{"resourceType":"Bundle","type":"collection","entry":[',
        ",\n".join(json.dumps({"resource": r}, separators=(",", ":")) for r in resources),
        "]}",
    ]
    report = LoadReport("fhir")
    options = FHIRLoadOptions(unlabeled="keep", deidentify=deidentify)
    with _memory_file("\n".join(lines).encode()) as path:
        cases = list(load_fhir(path, report, options=options))
    return cases, report.skipped


def _describe(reason: str, detail: str) -> str:
    if reason == "wrong resourceType":
        return "resourceType is missing or not a FHIR R4 resource type"
    rtype, _, rest = detail.partition(": ")
    fields = []
    for part in rest.split("; "):
        path, _, msg = part.partition(": ")
        if not path or " " in path:
            continue
        if msg == "Extra inputs are not permitted":
            # The last part is the caller's own key: name where it is, never the key itself.
            parent = path.rpartition(".")[0]
            fields.append(f"{parent + '.' if parent else ''}<unknown key> (not a FHIR field)")
            continue
        fields.append(f"{path} ({msg})" if _SAFE_MSG.match(msg) else path)
    if fields:
        return f"{rtype}: invalid field {', '.join(fields[:5])}"
    if rest.strip() == "missing id":
        return f"{rtype}: missing id"
    return f"{rtype or 'resource'}: invalid resource"


def _synthetic_encounter(resources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """An in-progress Encounter of the prefetch's patient covering its Observations (the
    visit being viewed), or ``None`` without a Patient."""
    patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
    if patient is None or not isinstance(patient.get("id"), str):
        return None
    times = []
    for r in resources:
        if r.get("resourceType") == "Observation":
            when = r.get("effectiveDateTime") or r.get("issued")
            if isinstance(when, str):
                try:
                    t = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
                except ValueError:
                    continue
                times.append(t if t.tzinfo else t.replace(tzinfo=dt.UTC))
    now = dt.datetime.now(dt.UTC)
    start = min(times) if times else now
    return {
        "resourceType": "Encounter",
        "id": "cds-patient-view",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient['id']}"},
        "period": {"start": start.isoformat(), "end": max(now, start).isoformat()},
    }


@contextmanager
def _memory_file(data: bytes) -> Iterator[Path]:
    """``data`` as a readable path without a file on disk (Linux ``memfd``); elsewhere a
    private temporary file, removed on exit."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("feddx-fhir", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="feddx-fhir-") as tmp:  # pragma: no cover
        path = Path(tmp) / "bundle.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
