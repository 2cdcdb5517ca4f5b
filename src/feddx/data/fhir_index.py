"""An in-memory index of FHIR resources, grouped by patient, with references resolved.

Each validated resource (see :mod:`feddx.data.fhir_read`) is reduced at once to a small
record of what the case builder needs: names, codes, dates and references. Clinical notes are
not kept: for NDJSON only the line's byte offset is stored and the note is re-read from disk
when its case is built, so memory grows with the structured data, not with the notes.

References are resolved after everything is read, in all the forms bulk exports and Bundles
use: literal (``Patient/123``, absolute URLs, ``_history`` versions), Bundle ``fullUrl``
(``urn:uuid:...``) and conditional (``Organization?identifier=system|value``, as Synthea
writes). A clinical resource whose patient or encounter is not in the data is a dangling
reference: it is reported and skipped. An organization or location that cannot be resolved
falls back to the reference's ``display``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from feddx.data.fhir_read import Position, ReadResource
from feddx.data.report import LoadReport
from feddx.data.schema import Sex

# SNOMED CT semantic tags as they end a fully specified name: "Sepsis (disorder)".
SEMANTIC_TAGS = frozenset(
    {
        "disorder",
        "finding",
        "situation",
        "procedure",
        "event",
        "morphologic abnormality",
        "observable entity",
        "regime/therapy",
        "qualifier value",
        "body structure",
        "substance",
        "product",
        "medicinal product",
        "clinical drug",
        "physical object",
        "environment",
        "person",
        "record artifact",
        "assessment scale",
        "occupation",
        "social concept",
        "specimen",
        "organism",
    }
)
_TAG = re.compile(r"\s*\(([a-z][a-z /]*)\)\s*$")
_LITERAL_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ENCOUNTER_CLASS = {
    "AMB": "ambulatory visit",
    "EMER": "emergency visit",
    "IMP": "inpatient stay",
    "ACUTE": "inpatient stay",
    "NONAC": "inpatient stay",
    "OBSENC": "observation stay",
    "SS": "short stay",
    "HH": "home health visit",
    "VR": "virtual visit",
    "FLD": "field visit",
}
# Statuses that mean "this did not happen": such resources are ignored, not reported as errors.
_VOID_STATUS = frozenset({"entered-in-error", "cancelled", "not-done", "draft"})
_REFUTED = frozenset({"refuted", "entered-in-error"})


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(kw_only=True)
class Record:
    """What every indexed resource has: its key (``Type/id``) and where it was read."""

    key: str
    where: Position


@dataclass(kw_only=True)
class PatientRecord(Record):
    sex: Sex | None
    birth_date: dt.date | None
    state: str | None
    # The patient's own names, identifiers, address parts and contacts: redacted from their
    # notes, never stored in a case.
    identifiers: tuple[str, ...]


@dataclass(kw_only=True)
class PlaceRecord(Record):
    """An Organization or a Location: a name and where it is."""

    name: str | None
    city: str | None
    state: str | None
    managing_org: str | None = None


@dataclass(frozen=True)
class Reason:
    """A reason for a visit; ``free_text`` when it came from a ``.text`` field (de-identified)."""

    text: str
    free_text: bool


@dataclass(kw_only=True)
class ClinicalRecord(Record):
    """A resource about one patient, possibly tied to one encounter, at a time."""

    subject: str | None
    encounter_ref: str | None = None
    when: dt.datetime | None = None
    patient: str | None = None  # resolved key
    encounter: str | None = None  # resolved key


@dataclass(kw_only=True)
class EncounterRecord(ClinicalRecord):
    end: dt.datetime | None
    kind: str | None
    reasons: tuple[Reason, ...]
    provider_ref: str | None
    provider_display: str | None
    location_ref: str | None
    location_display: str | None
    diagnosis_refs: tuple[tuple[str, int | None], ...]  # (Condition reference, rank)


@dataclass(kw_only=True)
class ConditionRecord(ClinicalRecord):
    name: str
    tag: str | None  # SNOMED CT semantic tag, e.g. "disorder", "finding"
    icd10: str | None
    confirmed: bool


@dataclass(frozen=True)
class ObservedValue:
    name: str
    value: str | float | int | None
    unit: str | None = None
    negated: bool = False
    free_text: bool = False


@dataclass(kw_only=True)
class ObservationRecord(ClinicalRecord):
    values: tuple[ObservedValue, ...]


@dataclass(kw_only=True)
class MedicationRecord(ClinicalRecord):
    name: str | None
    medication_ref: str | None
    medication_display: str | None
    status: str | None
    end: dt.datetime | None


@dataclass(kw_only=True)
class ProcedureRecord(ClinicalRecord):
    name: str


@dataclass(kw_only=True)
class NoteRecord(ClinicalRecord):
    """A DocumentReference or DiagnosticReport with text/plain content.

    ``attachments`` holds ``(contentType, decoded bytes)`` for resources read from a Bundle;
    it is ``None`` for NDJSON, where the note is re-read from ``where`` when needed.
    """

    resource_type: str
    attachments: tuple[tuple[str | None, bytes], ...] | None
    conclusion: str | None = None


@dataclass
class PatientData:
    """Everything indexed about one patient, references resolved."""

    patient: PatientRecord
    encounters: list[EncounterRecord] = field(default_factory=list)
    conditions: list[ConditionRecord] = field(default_factory=list)
    observations: list[ObservationRecord] = field(default_factory=list)
    medications: list[MedicationRecord] = field(default_factory=list)
    procedures: list[ProcedureRecord] = field(default_factory=list)
    notes: list[NoteRecord] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Small helpers over fhir.resources models (typed as Any: the library is untyped for mypy)


def clean_name(name: str) -> str:
    """A display name without its SNOMED CT semantic tag ("Sepsis (disorder)" -> "Sepsis")."""
    m = _TAG.search(name)
    if m and m.group(1) in SEMANTIC_TAGS:
        return name[: m.start()].strip()
    return name.strip()


def semantic_tag(name: str) -> str | None:
    m = _TAG.search(name)
    return m.group(1) if m and m.group(1) in SEMANTIC_TAGS else None


def concept_name(cc: Any) -> str | None:
    """A CodeableConcept's readable name: its text, else the first coding display, else code."""
    if cc is None:
        return None
    if cc.text and cc.text.strip():
        return str(cc.text).strip()
    for coding in cc.coding or ():
        if coding.display and coding.display.strip():
            return str(coding.display).strip()
    for coding in cc.coding or ():
        if coding.code:
            return str(coding.code)
    return None


def concept_icd10(cc: Any) -> str | None:
    """The code of the first coding whose system is ICD-10 (or ICD-10-CM), if any."""
    for coding in (cc.coding or ()) if cc is not None else ():
        system = (coding.system or "").lower()
        if re.search(r"icd-?10", system) and "pcs" not in system and coding.code:
            return str(coding.code).strip()
    return None


def as_datetime(value: Any) -> dt.datetime | None:
    """A timezone-aware datetime from a FHIR date/dateTime/instant (dates at 00:00 UTC)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):  # partial dates ("2020", "2020-05") stay strings in fhir.resources
        m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", value.strip())
        if m:
            return dt.datetime(int(m[1]), int(m[2] or 1), int(m[3] or 1), tzinfo=dt.UTC)
    return None


def _first_time(*values: Any) -> dt.datetime | None:
    for v in values:
        t = as_datetime(v)
        if t is not None:
            return t
    return None


def _ref(reference: Any) -> str | None:
    return str(reference.reference) if reference is not None and reference.reference else None


def _display(reference: Any) -> str | None:
    return str(reference.display) if reference is not None and reference.display else None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        return float(value)
    return None


# ---------------------------------------------------------------------------------------------
# The index


class FHIRIndex:
    """Collects records with :meth:`add`, then :meth:`resolve` groups them by patient.

    ``ignored`` counts valid resources that carry nothing to use (by type and why).
    """

    def __init__(self, report: LoadReport, ignored: Counter[str] | None = None) -> None:
        self.report = report
        self.ignored: Counter[str] = ignored if ignored is not None else Counter()
        self.patients: dict[str, PatientRecord] = {}
        self.places: dict[str, PlaceRecord] = {}
        self.medication_names: dict[str, str] = {}
        self.encounters: dict[str, EncounterRecord] = {}
        self.clinical: list[ClinicalRecord] = []
        self._keys: set[str] = set()
        self._void: set[str] = set()
        self._aliases: dict[str, str] = {}
        self._identifiers: dict[tuple[str, str], str] = {}

    # -- collecting ---------------------------------------------------------------------------

    def add(self, res: ReadResource) -> None:
        """Reduce one validated resource to its record and register its key and aliases."""
        m = res.model
        rtype = str(m.get_resource_type())
        key = f"{rtype}/{m.id}"
        if key in self._keys:
            if rtype not in ("Organization", "Location", "Medication"):
                # Shared reference data repeats across Bundles; clinical data must not.
                self.report.skip(
                    res.where.file, res.where.line, "duplicate resource", f"{rtype} id read twice"
                )
            return
        status = getattr(m, "status", None)
        if isinstance(status, str) and status in _VOID_STATUS:
            self.ignored[f"{rtype} ({status})"] += 1
            self._void.add(key)  # what refers to it is void too, not dangling
            return
        record = self._record(rtype, key, res)
        if record is None:
            return
        self._keys.add(key)
        if res.full_url:
            self._aliases[res.full_url] = key
        for ident in getattr(m, "identifier", None) or ():
            if ident.value:
                self._identifiers[(rtype, f"{ident.system or ''}|{ident.value}")] = key
                self._identifiers.setdefault((rtype, str(ident.value)), key)

    def _record(self, rtype: str, key: str, res: ReadResource) -> Record | None:
        m, where = res.model, res.where
        if rtype == "Patient":
            patient = _patient_record(key, m, where)
            self.patients[key] = patient
            return patient
        if rtype in ("Organization", "Location"):
            place = _place_record(rtype, key, m, where)
            self.places[key] = place
            return place
        if rtype == "Medication":
            name = concept_name(m.code)
            if name:
                self.medication_names[key] = clean_name(name)
            return Record(key=key, where=where)
        clinical = self._clinical_record(rtype, key, res)
        if clinical is None:
            return None
        if isinstance(clinical, EncounterRecord):
            self.encounters[key] = clinical
        else:
            self.clinical.append(clinical)
        return clinical

    def _clinical_record(self, rtype: str, key: str, res: ReadResource) -> ClinicalRecord | None:
        m, where = res.model, res.where
        subject = _ref(m.subject)
        if rtype == "Encounter":
            return _encounter_record(key, m, where, subject)
        if rtype == "Condition":
            raw_name = concept_name(m.code)
            if raw_name is None:
                self.report.skip(where.file, where.line, "invalid resource", "Condition: no code")
                return None
            verification = (
                m.verificationStatus.coding[0].code
                if m.verificationStatus is not None and m.verificationStatus.coding
                else None
            )
            if verification in _REFUTED:
                self.ignored[f"Condition ({verification})"] += 1
                return None
            return ConditionRecord(
                key=key,
                where=where,
                subject=subject,
                encounter_ref=_ref(m.encounter),
                when=_first_time(
                    m.onsetDateTime,
                    m.onsetPeriod.start if m.onsetPeriod is not None else None,
                    m.recordedDate,
                ),
                name=clean_name(raw_name),
                tag=semantic_tag(raw_name),
                icd10=concept_icd10(m.code),
                confirmed=verification in (None, "confirmed"),
            )
        if rtype == "Observation":
            values = _observation_values(m)
            if not values:
                self.ignored["Observation (no code)"] += 1
                return None
            return ObservationRecord(
                key=key,
                where=where,
                subject=subject,
                encounter_ref=_ref(m.encounter),
                when=_first_time(
                    m.effectiveDateTime,
                    m.effectivePeriod.start if m.effectivePeriod is not None else None,
                    m.effectiveInstant,
                    m.issued,
                ),
                values=values,
            )
        if rtype == "MedicationRequest":
            return _medication_record(key, m, where, subject)
        if rtype == "Procedure":
            name = concept_name(m.code)
            if name is None:
                self.ignored["Procedure (no code)"] += 1
                return None
            return ProcedureRecord(
                key=key,
                where=where,
                subject=subject,
                encounter_ref=_ref(m.encounter),
                when=_first_time(
                    m.performedDateTime,
                    m.performedPeriod.start if m.performedPeriod is not None else None,
                ),
                name=clean_name(name),
            )
        if rtype in ("DocumentReference", "DiagnosticReport"):
            return self._note_record(rtype, key, res, subject)
        return None

    def _note_record(
        self, rtype: str, key: str, res: ReadResource, subject: str | None
    ) -> NoteRecord | None:
        m, where = res.model, res.where
        if rtype == "DocumentReference":
            attachments = [c.attachment for c in m.content or ()]
            enc_refs = m.context.encounter if m.context is not None else None
            encounter_ref = _ref(enc_refs[0]) if enc_refs else None
            when = _first_time(
                m.date, m.context.period.start if m.context and m.context.period else None
            )
            conclusion = None
        else:
            attachments = list(m.presentedForm or ())
            encounter_ref = _ref(m.encounter)
            when = _first_time(
                m.effectiveDateTime,
                m.effectivePeriod.start if m.effectivePeriod is not None else None,
                m.issued,
            )
            conclusion = str(m.conclusion) if m.conclusion else None
        # fhir.resources has already base64-decoded (and so validated) ``data`` into bytes.
        texts = tuple(
            (a.contentType, bytes(a.data))
            for a in attachments
            if a is not None and a.data and is_plain_text(a.contentType)
        )
        if not texts and conclusion is None:
            self.ignored[f"{rtype} (no text/plain data)"] += 1
            return None
        return NoteRecord(
            key=key,
            where=where,
            subject=subject,
            encounter_ref=encounter_ref,
            when=when,
            resource_type=rtype,
            # NDJSON lines can be re-read from disk; Bundle entries cannot.
            attachments=None if where.offset is not None else texts,
            conclusion=conclusion,
        )

    # -- resolving ----------------------------------------------------------------------------

    def reference(self, ref: str | None, rtype: str) -> str | None:
        """The key (``Type/id``) a reference points to, if that resource was read."""
        if not ref:
            return None
        key: str | None
        if ref in self._aliases:
            key = self._aliases[ref]
        elif ref.startswith(f"{rtype}?"):
            query = parse_qs(ref.split("?", 1)[1])
            values = query.get("identifier") or [""]
            key = self._identifiers.get((rtype, values[0]))
        else:
            m = _LITERAL_REF.search(ref)
            key = f"{m.group(1)}/{m.group(2)}" if m else None
        if key is None or not key.startswith(f"{rtype}/"):
            return None
        return key if key in self._keys or key in self._void else None

    def place(self, ref: str | None, rtype: str) -> PlaceRecord | None:
        key = self.reference(ref, rtype)
        return self.places.get(key) if key else None

    def resolve(self) -> dict[str, PatientData]:
        """Group every record under its patient; report and drop dangling references."""
        by_patient = {key: PatientData(rec) for key, rec in self.patients.items()}
        for enc in self.encounters.values():
            enc.patient = self._subject(enc)
            if enc.patient is not None:
                by_patient[enc.patient].encounters.append(enc)
        for rec in self.clinical:
            rec.patient = self._subject(rec)
            if rec.patient is None:
                continue
            if rec.encounter_ref is not None:
                rec.encounter = self.reference(rec.encounter_ref, "Encounter")
                if rec.encounter in self._void:
                    self.ignored[f"{rec.key.split('/', 1)[0]} (of a void encounter)"] += 1
                    continue
                linked = self.encounters.get(rec.encounter) if rec.encounter else None
                if linked is None or linked.patient is None:
                    self._dangling(rec, "encounter: Encounter not in the data")
                    continue
                if linked.patient != rec.patient:
                    self._dangling(rec, "encounter belongs to another patient")
                    continue
            data = by_patient[rec.patient]
            if isinstance(rec, ConditionRecord):
                data.conditions.append(rec)
            elif isinstance(rec, ObservationRecord):
                data.observations.append(rec)
            elif isinstance(rec, MedicationRecord):
                if rec.name is None:
                    key = self.reference(rec.medication_ref, "Medication")
                    rec.name = (
                        self.medication_names.get(key) if key else None
                    ) or rec.medication_display
                if rec.name is None:
                    self._dangling(rec, "medicationReference: Medication not in the data")
                    continue
                data.medications.append(rec)
            elif isinstance(rec, ProcedureRecord):
                data.procedures.append(rec)
            elif isinstance(rec, NoteRecord):
                data.notes.append(rec)
        return by_patient

    def _subject(self, rec: ClinicalRecord) -> str | None:
        rtype = rec.key.split("/", 1)[0]
        if rec.subject is None:
            self.report.skip(
                rec.where.file, rec.where.line, "dangling reference", f"{rtype}: no subject"
            )
            return None
        key = self.reference(rec.subject, "Patient")
        if key is None:
            self._dangling(rec, "subject: Patient not in the data")
        return key

    def _dangling(self, rec: Record, detail: str) -> None:
        rtype = rec.key.split("/", 1)[0]
        self.report.skip(rec.where.file, rec.where.line, "dangling reference", f"{rtype} {detail}")


def is_plain_text(content_type: str | None) -> bool:
    """Whether an attachment is plain text (a missing contentType is taken as plain text)."""
    return content_type is None or content_type.split(";", 1)[0].strip().lower() == "text/plain"


# ---------------------------------------------------------------------------------------------
# Per-type record builders


def _patient_record(key: str, m: Any, where: Position) -> PatientRecord:
    gender = m.gender if m.gender in ("female", "male", "other", "unknown") else None
    addresses = list(m.address or ())
    home = next((a for a in addresses if a.use == "home"), addresses[0] if addresses else None)
    return PatientRecord(
        key=key,
        where=where,
        sex=gender,
        birth_date=(b.date() if (b := as_datetime(m.birthDate)) else None),
        state=str(home.state) if home is not None and home.state else None,
        identifiers=tuple(_patient_identifiers(m)),
    )


def _patient_identifiers(m: Any) -> list[str]:
    """The strings that identify this patient, to be redacted wherever they appear in notes."""
    found: list[str] = []

    def add(*values: Any) -> None:
        for v in values:
            if isinstance(v, str) and len(v.strip()) >= 2 and v.strip() not in found:
                found.append(v.strip())

    for name in m.name or ():
        given = [str(g) for g in name.given or ()]
        add(name.text, name.family, *given)
        if given and name.family:
            add(" ".join([*given, name.family]), f"{given[0]} {name.family}")
            add(f"{name.family}, {given[0]}")
        if len(given) > 1:
            add(" ".join(given))
    for ident in m.identifier or ():
        add(ident.value)
    for addr in m.address or ():
        add(*(addr.line or ()), addr.city, addr.postalCode, addr.text)
    for tel in m.telecom or ():
        add(tel.value)
    for contact in m.contact or ():
        if contact.name is not None:
            add(contact.name.text, contact.name.family, *(contact.name.given or ()))
    for ext in m.extension or ():
        # Synthea (and US Core profiles) carry the mother's maiden name as an extension.
        if str(ext.url).endswith("patient-mothersMaidenName") and ext.valueString:
            add(ext.valueString, *str(ext.valueString).split())
    return found


def _place_record(rtype: str, key: str, m: Any, where: Position) -> PlaceRecord:
    address = m.address
    if isinstance(address, list):  # Organization.address is a list, Location.address is not
        address = address[0] if address else None
    return PlaceRecord(
        key=key,
        where=where,
        name=str(m.name) if m.name else None,
        city=str(address.city) if address is not None and address.city else None,
        state=str(address.state) if address is not None and address.state else None,
        managing_org=_ref(m.managingOrganization) if rtype == "Location" else None,
    )


def _encounter_record(key: str, m: Any, where: Position, subject: str | None) -> EncounterRecord:
    kind = next((n for n in (concept_name(t) for t in m.type or ()) if n), None)
    if kind is None and m.class_fhir is not None:
        kind = _ENCOUNTER_CLASS.get(str(m.class_fhir.code), m.class_fhir.display)
    reasons: list[Reason] = []
    for cc in m.reasonCode or ():
        if cc.text and cc.text.strip():
            reasons.append(Reason(str(cc.text).strip(), free_text=True))
        elif (name := concept_name(cc)) is not None:
            reasons.append(Reason(clean_name(name), free_text=False))
    for ref in m.reasonReference or ():
        if ref.display:
            reasons.append(Reason(clean_name(str(ref.display)), free_text=False))
    location = m.location[0].location if m.location else None
    return EncounterRecord(
        key=key,
        where=where,
        subject=subject,
        when=as_datetime(m.period.start) if m.period is not None else None,
        end=as_datetime(m.period.end) if m.period is not None else None,
        kind=clean_name(kind) if kind else None,
        reasons=tuple(reasons),
        provider_ref=_ref(m.serviceProvider),
        provider_display=_display(m.serviceProvider),
        location_ref=_ref(location),
        location_display=_display(location),
        diagnosis_refs=tuple(
            (ref, d.rank) for d in m.diagnosis or () if (ref := _ref(d.condition)) is not None
        ),
    )


def _observation_values(m: Any) -> tuple[ObservedValue, ...]:
    name = concept_name(m.code)
    values: list[ObservedValue] = []
    if name is None:
        return ()
    components = list(m.component or ())
    own = _observed(clean_name(name), m)
    if own is not None and (not components or own.value is not None or own.negated):
        values.append(own)
    for comp in components:
        comp_name = concept_name(comp.code)
        if comp_name and (v := _observed(clean_name(comp_name), comp)) is not None:
            values.append(v)
    return tuple(values)


def _observed(name: str, m: Any) -> ObservedValue | None:
    """The value of an Observation (or one of its components); ``None`` when data is absent."""
    if m.dataAbsentReason is not None:
        return None
    if m.valueQuantity is not None:
        q = m.valueQuantity
        unit = q.unit or q.code
        return ObservedValue(name, _number(q.value), str(unit) if unit else None)
    if m.valueCodeableConcept is not None:
        return ObservedValue(name, concept_name(m.valueCodeableConcept))
    if m.valueString is not None:
        return ObservedValue(name, str(m.valueString), free_text=True)
    if m.valueBoolean is not None:
        return ObservedValue(name, None, negated=not m.valueBoolean)
    if m.valueInteger is not None:
        return ObservedValue(name, int(m.valueInteger))
    return ObservedValue(name, None)


def _medication_record(key: str, m: Any, where: Position, subject: str | None) -> MedicationRecord:
    name = concept_name(m.medicationCodeableConcept)
    ends: list[Any] = []
    if m.dispenseRequest is not None and m.dispenseRequest.validityPeriod is not None:
        ends.append(m.dispenseRequest.validityPeriod.end)
    for dosage in m.dosageInstruction or ():
        repeat = dosage.timing.repeat if dosage.timing is not None else None
        if repeat is not None and repeat.boundsPeriod is not None:
            ends.append(repeat.boundsPeriod.end)
    return MedicationRecord(
        key=key,
        where=where,
        subject=subject,
        encounter_ref=_ref(m.encounter),
        when=as_datetime(m.authoredOn),
        name=clean_name(name) if name else None,
        medication_ref=_ref(m.medicationReference),
        medication_display=_display(m.medicationReference),
        status=str(m.status) if m.status else None,
        end=_first_time(*ends),
    )


def index_resources(
    resources: Iterable[ReadResource], report: LoadReport, ignored: Counter[str]
) -> FHIRIndex:
    """Index every resource (see :class:`FHIRIndex`)."""
    index = FHIRIndex(report, ignored)
    for res in resources:
        index.add(res)
    return index
