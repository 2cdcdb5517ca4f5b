"""FHIR R4 (Bundle JSON and bulk-export NDJSON) into cases: one per encounter, or per patient.

A case is what was known when a patient was seen, and what was diagnosed:

- **label**: the Conditions diagnosed at the encounter (``Condition.encounter``, or listed in
  ``Encounter.diagnosis``), the primary one first (by ``Encounter.diagnosis.rank``, then
  confirmed before provisional, then time). The name comes from ``code.text`` or the first
  coding's display, without its SNOMED CT semantic tag ("Sepsis (disorder)" -> "Sepsis"); the
  ICD-10 code from a coding whose system is ICD-10, else from
  ``feddx.data.icd10.lookup_icd10`` when that module is installed.
  Conditions whose SNOMED CT semantic tag is in :attr:`FHIRLoadOptions.finding_tags` (by
  default "finding" and "situation": "Fever (finding)", "Full-time employment (finding)",
  "History of renal transplant (situation)") are not diagnoses: they become findings.
- **findings**: the kind of visit, its reason (unless the reason names the diagnosis), the
  finding-type Conditions, the Observations (name, value, unit; components such as blood
  pressure each become a finding) and the Procedures of the encounter.
- **text**: the encounter's notes (DocumentReference ``content`` and DiagnosticReport
  ``presentedForm``, base64 text/plain), cut before their first assessment/plan/impression/
  diagnosis heading (that part states the answer; Synthea's "Assessment and Plan" names the
  diagnosis in every note), and de-identified.
- **history**: the patient's earlier encounters (start strictly before this one, oldest first,
  the most recent :attr:`~FHIRLoadOptions.max_history_encounters`) with their diagnoses;
  ``prior_conditions``: every Condition with onset before this encounter; ``medications``:
  the MedicationRequests authored before it and still active then (an explicit end after it,
  status active/on-hold, or otherwise authored within
  :attr:`~FHIRLoadOptions.medication_window_days`).
- **demographics and place**: age at the encounter from ``birthDate`` (90 for anyone older
  when de-identifying, as HIPAA Safe Harbor requires), sex from ``gender``, the
  ``serviceProvider`` Organization's name as institution, and its address state (or
  "city, state") as region; the patient's own state is the fallback region, never their city.

Privacy: free text (notes, free-text reasons, string observations) is de-identified before it
is stored in a case when :attr:`~FHIRLoadOptions.deidentify` is on (the default), with
:class:`feddx.data.deid.Deidentifier` plus every occurrence of the patient's own names,
identifiers, address and contacts. If that module is not installed, notes are dropped and
reported, never stored raw. Names of diagnoses, medications, procedures and observations are
terminology and are kept as they are. The patient's name is never put in a case. Case and
patient ids are the Encounter and Patient resource ids as read (a hospital's may embed a record
number): every path that writes, sends or logs cases passes them through
:class:`feddx.data.stage.DeidStage`, which replaces them with keyed pseudonyms, the same for the
same id under one ``FEDDX_DEID_KEY``, so a patient's cases still link, and shifts their dates.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import importlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field, ValidationError

from feddx.data.fhir_index import (
    ClinicalRecord,
    ConditionRecord,
    EncounterRecord,
    FHIRIndex,
    MedicationRecord,
    NoteRecord,
    PatientData,
    Reason,
    index_resources,
    is_plain_text,
)
from feddx.data.fhir_read import read_resources
from feddx.data.report import LoadReport, describe_error
from feddx.data.schema import Case, Encounter, Finding, History, Label
from feddx.data.sources import register_source
from feddx.settings import Names, Settings

SOURCE = "fhir"
HIPAA_MAX_AGE = 90

# A heading (or a "Heading:" line) that starts the clinician's conclusion.
_ASSESSMENT_HEADING = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?(?:assessment|impression|final diagnos[ie]s|diagnos[ie]s|"
    r"differential|plan|a[ \t]*/[ \t]*p|conclusions?)\b",
    re.IGNORECASE | re.MULTILINE,
)


class FHIRLoadOptions(Settings):
    """How FHIR resources become cases. The registry loader (``fhir`` source) uses defaults.

    Parameters
    ----------
    granularity
        ``"encounter"`` (default): one case per encounter. ``"patient"``: one case per
        patient, built at the patient's last encounter with a diagnosis (their last encounter
        if none and ``unlabeled="keep"``), with everything before it as history.
    unlabeled
        What to do with an encounter without any diagnosis: ``"skip"`` (default; reported
        under the reason "no diagnosis", since training and evaluation need a label) or
        ``"keep"`` (a case with ``label=None``, e.g. for inference).
    deidentify
        De-identify free text before it is stored (default ``True``).
    finding_tags
        SNOMED CT semantic tags of Conditions that are findings, not diagnoses.
        ``()`` treats every Condition as a diagnosis.
    strip_assessment
        Cut notes before their first assessment/plan/impression/diagnosis heading, where the
        answer is written (default ``True``).
    include_procedures
        Add the encounter's Procedures to its findings (default ``True``).
    max_history_encounters
        Keep at most this many earlier encounters (the most recent); ``None`` keeps all.
    medication_window_days
        A stopped or completed prescription without an end date counts as active for this
        many days after it was written.
    region_level
        ``"state"`` (default) or ``"city"`` (``"City, ST"`` of the organization).
    """

    settings_name: ClassVar[str] = "fhir"

    granularity: Literal["encounter", "patient"] = "encounter"
    unlabeled: Literal["skip", "keep"] = "skip"
    deidentify: bool = True
    finding_tags: Names = ("finding", "situation")
    strip_assessment: bool = True
    include_procedures: bool = True
    max_history_encounters: int | None = Field(default=50, ge=0)
    medication_window_days: int = Field(default=365, ge=0)
    region_level: Literal["state", "city"] = "state"


@dataclass
class FHIRLoadStats:
    """Counts of one load, beyond the :class:`LoadReport` (filled in as cases are yielded)."""

    resources: Counter[str] = field(default_factory=Counter)  # validated and indexed, by type
    ignored: Counter[str] = field(default_factory=Counter)  # valid but unused, by type/why
    patients: int = 0
    encounters: int = 0
    cases: int = 0
    labeled: int = 0
    unlabeled: int = 0
    with_history: int = 0
    multi_diagnosis: int = 0  # labeled cases with more than one diagnosis (primary kept)
    notes: int = 0  # notes decoded into case text
    label_in_text: int = 0  # labeled cases whose text still names the diagnosis

    def as_dict(self) -> dict[str, Any]:
        return {
            "resources": dict(self.resources),
            "ignored": dict(self.ignored),
            **{
                k: getattr(self, k)
                for k in (
                    "patients",
                    "encounters",
                    "cases",
                    "labeled",
                    "unlabeled",
                    "with_history",
                    "multi_diagnosis",
                    "notes",
                    "label_in_text",
                )
            },
        }


class TextRedactor(Protocol):
    """What the loader needs from a de-identifier (:class:`feddx.data.deid.Deidentifier`)."""

    def redact_text(self, text: str, extra_identifiers: Sequence[str] = ()) -> str: ...


def load_fhir(
    path: Path,
    report: LoadReport | None = None,
    *,
    options: FHIRLoadOptions | None = None,
    stats: FHIRLoadStats | None = None,
    redactor: TextRedactor | None = None,
) -> Iterator[Case]:
    """Yield the cases of the FHIR files at ``path`` (a file, or a directory of ``*.json``
    Bundles/resources and ``*.ndjson`` bulk-export files; both may be mixed).

    Every resource is read and indexed first (cases need a patient's whole record), then
    cases are built patient by patient. Invalid records are skipped into ``report`` with file,
    line and reason; ``stats`` receives the counts. ``redactor`` replaces the default
    :class:`feddx.data.deid.Deidentifier` (pass one to reuse it across loads). Raises
    :class:`~feddx.errors.DataError` if ``path`` has no FHIR files or one cannot be opened.
    """
    report = report if report is not None else LoadReport(SOURCE)
    options = options or FHIRLoadOptions()
    stats = stats if stats is not None else FHIRLoadStats()

    def counted() -> Iterator[Any]:
        for res in read_resources(path, report, ignored=stats.ignored):
            stats.resources[res.model.get_resource_type()] += 1
            yield res

    index = index_resources(counted(), report, stats.ignored)
    patients = index.resolve()
    builder = _CaseBuilder(index, options, report, stats, redactor)
    for data in patients.values():
        stats.patients += 1
        for case in builder.patient_cases(data):
            report.n_cases += 1
            yield case


register_source(SOURCE, load_fhir)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Visit:
    """One dated encounter of a patient, with what happened at it."""

    record: EncounterRecord
    start: dt.datetime
    diagnoses: list[ConditionRecord] = field(default_factory=list)
    finding_conditions: list[ConditionRecord] = field(default_factory=list)
    ranks: dict[str, int] = field(default_factory=dict)
    observations: list[Any] = field(default_factory=list)
    procedures: list[Any] = field(default_factory=list)
    notes: list[NoteRecord] = field(default_factory=list)


class _Timeline:
    """A patient's dated Conditions and MedicationRequests in time order, for bisecting."""

    def __init__(
        self,
        conditions: Iterable[ConditionRecord] = (),
        medications: Iterable[MedicationRecord] = (),
    ) -> None:
        self.conditions = sorted((c for c in conditions if c.when), key=_when)
        self.condition_times = [_when(c) for c in self.conditions]
        self.medications = sorted((m for m in medications if m.when and m.name), key=_when)
        self.medication_times = [_when(m) for m in self.medications]


def _when(rec: ClinicalRecord) -> dt.datetime:
    assert rec.when is not None
    return rec.when


class _CaseBuilder:
    def __init__(
        self,
        index: FHIRIndex,
        options: FHIRLoadOptions,
        report: LoadReport,
        stats: FHIRLoadStats,
        redactor: TextRedactor | None,
    ) -> None:
        self.index = index
        self.options = options
        self.report = report
        self.stats = stats
        self._redactor = redactor
        self._redactor_loaded = redactor is not None
        self._icd10: tuple[Callable[[str], str | None] | None, Callable[[str], str] | None] | None
        self._icd10 = None
        # Per patient, set by patient_cases().
        self._reason_cache: dict[str, str | None] = {}
        self._timeline = _Timeline()

    # -- per patient --------------------------------------------------------------------------

    def patient_cases(self, data: PatientData) -> Iterator[Case]:
        self._reason_cache = {}
        visits = self._visits(data)
        self._timeline = _Timeline(data.conditions, data.medications)
        self.stats.encounters += len(visits)
        history = [self._history_entry(v, data) for v in visits]
        starts = [v.start for v in visits]
        if self.options.granularity == "patient":
            labeled = [i for i, v in enumerate(visits) if v.diagnoses]
            if labeled or (visits and self.options.unlabeled == "keep"):
                i = labeled[-1] if labeled else len(visits) - 1
                case = self._case(data, visits[i], history, starts, data.patient.key)
                if case is not None:
                    yield case
            else:
                where = data.patient.where
                self.report.skip(
                    where.file, where.line, "no diagnosis", "Patient: no encounter with a diagnosis"
                )
            return
        for visit in visits:
            if not visit.diagnoses and self.options.unlabeled == "skip":
                where = visit.record.where
                self.report.skip(
                    where.file, where.line, "no diagnosis", "Encounter: no diagnosis Condition"
                )
                continue
            case = self._case(data, visit, history, starts, visit.record.key)
            if case is not None:
                yield case

    def _visits(self, data: PatientData) -> list[_Visit]:
        """The patient's dated encounters in time order, each with its conditions, observations,
        procedures and notes attached."""
        visits: list[_Visit] = []
        for enc in data.encounters:
            if enc.when is None:
                where = enc.where
                self.report.skip(
                    where.file, where.line, "undated encounter", "Encounter.period.start missing"
                )
                continue
            visits.append(_Visit(enc, enc.when))
        visits.sort(key=lambda v: (v.start, v.record.key))
        by_key = {v.record.key: v for v in visits}
        starts = [v.start for v in visits]

        def visit_of(rec: Any) -> _Visit | None:
            if rec.encounter is not None:
                return by_key.get(rec.encounter)
            return _visit_at(visits, starts, rec.when)

        conditions = {c.key: c for c in data.conditions}
        listed_at: dict[str, list[_Visit]] = {}  # Condition key -> visits listing it
        for visit in visits:
            for pos, (ref, rank) in enumerate(visit.record.diagnosis_refs):
                key = self.index.reference(ref, "Condition")
                if key is not None and key in conditions:
                    visit.ranks[key] = rank if rank is not None else 1000 + pos
                    listed_at.setdefault(key, []).append(visit)
        for cond in data.conditions:
            own = by_key.get(cond.encounter) if cond.encounter else None
            at = listed_at.get(cond.key, [])
            for visit in {id(x): x for x in ([own] if own else []) + at}.values():
                if cond.tag in self.options.finding_tags:
                    visit.finding_conditions.append(cond)
                else:
                    visit.diagnoses.append(cond)
            if cond.when is None and (own or at):
                cond.when = (own or at[0]).start
            if cond.when is None:
                where = cond.where
                self.report.skip(
                    where.file,
                    where.line,
                    "undated resource",
                    "Condition: no onset, recordedDate or encounter",
                )
        for obs in data.observations:
            if (found := visit_of(obs)) is not None:
                found.observations.append(obs)
        for proc in data.procedures:
            if (found := visit_of(proc)) is not None:
                found.procedures.append(proc)
        for note in data.notes:
            if (found := visit_of(note)) is not None:
                found.notes.append(note)
        for visit in visits:
            _primary_first(visit)
        return visits

    # -- one case -----------------------------------------------------------------------------

    def _case(
        self,
        data: PatientData,
        visit: _Visit,
        history: list[Encounter],
        starts: list[dt.datetime],
        key: str,
    ) -> Case | None:
        enc = visit.record
        patient = data.patient
        label = self._label(visit)
        earlier = history[: bisect.bisect_left(starts, visit.start)]
        if self.options.max_history_encounters is not None:
            earlier = earlier[
                len(earlier) - min(len(earlier), self.options.max_history_encounters) :
            ]
        current = {c.key for c in visit.diagnoses} | {c.key for c in visit.finding_conditions}
        timeline = self._timeline
        before = timeline.conditions[: bisect.bisect_left(timeline.condition_times, visit.start)]
        prior = _distinct(c.name for c in before if c.key not in current)
        text = self._text(visit, patient.identifiers)
        institution, region = self._place(enc, patient.state)
        try:
            case = Case(
                case_id=key.split("/", 1)[1],
                patient_id=patient.key.split("/", 1)[1],
                age=self._age(patient.birth_date, visit.start.date()),
                sex=patient.sex,
                text=text,
                findings=self._findings(visit, label, patient.identifiers),
                history=History(
                    prior_conditions=prior,
                    medications=self._medications(visit.start),
                    encounters=tuple(earlier),
                ),
                date=visit.start.date(),
                region=region,
                institution=institution,
                source=SOURCE,
                label=label,
            )
        except ValidationError as e:
            self.report.skip(enc.where.file, enc.where.line, "invalid case", describe_error(e))
            return None
        self.stats.cases += 1
        if label is not None:
            self.stats.labeled += 1
            self.stats.multi_diagnosis += len({c.name for c in visit.diagnoses}) > 1
            if text and label.diagnosis.lower() in text.lower():
                self.stats.label_in_text += 1
        else:
            self.stats.unlabeled += 1
        self.stats.with_history += not case.history.is_empty()
        return case

    def _label(self, visit: _Visit) -> Label | None:
        if not visit.diagnoses:
            return None
        primary = visit.diagnoses[0]
        return Label(diagnosis=primary.name, icd10=self._icd10_code(primary))

    def _icd10_code(self, cond: ConditionRecord) -> str | None:
        lookup, normalize = self._terminology()
        if cond.icd10 is not None:
            if normalize is not None:
                try:
                    return normalize(cond.icd10)
                except ValueError:
                    return cond.icd10
            return cond.icd10
        return lookup(cond.name) if lookup is not None else None

    def _terminology(
        self,
    ) -> tuple[Callable[[str], str | None] | None, Callable[[str], str] | None]:
        # feddx.data.icd10 is optional here: without it, only coded ICD-10 is used.
        if self._icd10 is None:
            module = _optional_module("feddx.data.icd10")
            self._icd10 = (
                getattr(module, "lookup_icd10", None),
                getattr(module, "normalize_icd10", None),
            )
        return self._icd10

    def _age(self, birth: dt.date | None, on: dt.date) -> float | None:
        if birth is None:
            return None
        years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
        age: float = years if years >= 2 else round((on - birth).days / 365.25, 1)
        if self.options.deidentify:
            age = min(age, HIPAA_MAX_AGE)
        return age

    def _place(
        self, enc: EncounterRecord, patient_state: str | None
    ) -> tuple[str | None, str | None]:
        org = self.index.place(enc.provider_ref, "Organization")
        loc = self.index.place(enc.location_ref, "Location")
        loc_org = self.index.place(loc.managing_org, "Organization") if loc else None
        institution = next(
            (
                n
                for n in (
                    org.name if org else None,
                    enc.provider_display,
                    loc_org.name if loc_org else None,
                    loc.name if loc else None,
                    enc.location_display,
                )
                if n
            ),
            None,
        )
        region = None
        for place in (org, loc, loc_org):
            if place is not None and place.state:
                city = place.city.title() if place.city and place.city.isupper() else place.city
                region = (
                    f"{city}, {place.state}"
                    if self.options.region_level == "city" and city
                    else place.state
                )
                break
        return institution, region or patient_state

    def _findings(
        self, visit: _Visit, label: Label | None, identifiers: tuple[str, ...]
    ) -> tuple[Finding, ...]:
        enc = visit.record
        found: list[Finding] = []
        if enc.kind:
            found.append(Finding(name="visit", value=enc.kind))
        answers = {c.name.lower() for c in visit.diagnoses}
        for reason in enc.reasons:
            # A reason that names the diagnosis made at this visit would give the answer away.
            if reason.text.lower() in answers:
                continue
            text = self._reason_text(reason, identifiers)
            if text:
                found.append(Finding(name="reason for visit", value=text))
        for cond in visit.finding_conditions:
            found.append(Finding(name=cond.name))
        for obs in visit.observations:
            for v in obs.values:
                value = v.value
                if v.free_text and isinstance(value, str):
                    value = self._redact(value, identifiers)
                    if value is None:
                        continue
                found.append(Finding(name=v.name, value=value, unit=v.unit, negated=v.negated))
        if self.options.include_procedures:
            for proc in visit.procedures:
                found.append(Finding(name=proc.name, value="performed"))
        return tuple(dict.fromkeys(found))

    def _reason_text(self, reason: Reason, identifiers: tuple[str, ...]) -> str | None:
        if not reason.free_text:
            return reason.text
        # The same free-text reason recurs across a patient's visits: redact it once.
        if reason.text not in self._reason_cache:
            self._reason_cache[reason.text] = self._redact(reason.text, identifiers)
        return self._reason_cache[reason.text]

    def _medications(self, start: dt.datetime) -> tuple[str, ...]:
        """Prescriptions written strictly before ``start`` and still active then, latest first."""
        timeline = self._timeline
        window = dt.timedelta(days=self.options.medication_window_days)
        active: list[str] = []
        for med in reversed(
            timeline.medications[: bisect.bisect_left(timeline.medication_times, start)]
        ):
            assert med.when is not None and med.name is not None
            if med.end is not None:
                ok = med.end > start
            elif med.status in ("active", "on-hold"):
                ok = True
            else:
                ok = start - med.when <= window
            if ok:
                active.append(med.name)
        return _distinct(active)

    def _history_entry(self, visit: _Visit, data: PatientData) -> Encounter:
        enc = visit.record
        reasons = [t for r in enc.reasons if (t := self._reason_text(r, data.patient.identifiers))]
        return Encounter(
            date=visit.start.date(),
            kind=enc.kind,
            reason=", ".join(_distinct(reasons)) or None,
            diagnoses=_distinct(c.name for c in visit.diagnoses),
            institution=self._place(enc, None)[0],
        )

    # -- free text ----------------------------------------------------------------------------

    def _text(self, visit: _Visit, identifiers: tuple[str, ...]) -> str | None:
        parts: list[str] = []
        for note in sorted(visit.notes, key=lambda n: n.when or visit.start):
            for raw in self._note_texts(note):
                text = note_for_case(raw, strip_assessment=self.options.strip_assessment)
                if not text:
                    continue
                redacted = self._redact(text, identifiers)
                if redacted is None:
                    self.report.skip(
                        note.where.file,
                        note.where.line,
                        "note not de-identified",
                        "feddx.data.deid is not installed; note dropped",
                    )
                    continue
                parts.append(redacted)
                self.stats.notes += 1
        return "\n".join(parts) or None

    def _note_texts(self, note: NoteRecord) -> list[str]:
        attachments = note.attachments if note.attachments is not None else self._reread(note)
        texts: list[str] = []
        for n, (content_type, data) in enumerate(attachments):
            try:
                texts.append(data.decode(_charset(content_type)))
            except (ValueError, LookupError):
                self.report.skip(
                    note.where.file,
                    note.where.line,
                    "unreadable note",
                    f"{note.resource_type} attachment {n}: not text in its declared charset",
                )
        if note.conclusion and not self.options.strip_assessment:
            texts.append(f"Conclusion: {note.conclusion}")
        return texts

    def _reread(self, note: NoteRecord) -> list[tuple[str | None, bytes]]:
        """The text/plain attachments of a note, re-read from its NDJSON line."""
        assert note.where.offset is not None
        with note.where.path.open("rb") as f:
            f.seek(note.where.offset)
            raw = json.loads(f.readline())
        if note.resource_type == "DocumentReference":
            attachments = [c.get("attachment") or {} for c in raw.get("content") or ()]
        else:
            attachments = list(raw.get("presentedForm") or ())
        # The line passed validation when it was indexed, so the base64 is known to be valid.
        return [
            (a.get("contentType"), base64.b64decode(a["data"]))
            for a in attachments
            if a.get("data") and is_plain_text(a.get("contentType"))
        ]

    def _redact(self, text: str, identifiers: tuple[str, ...]) -> str | None:
        """``text`` de-identified (or as is when de-identification is off); ``None`` when it
        should be de-identified but no de-identifier is installed."""
        if not self.options.deidentify:
            return text
        if not self._redactor_loaded:
            self._redactor_loaded = True
            module = _optional_module("feddx.data.deid")
            if module is not None:
                self._redactor = module.Deidentifier()
        if self._redactor is None:
            return None
        return self._redactor.redact_text(text, extra_identifiers=identifiers)


def _primary_first(visit: _Visit) -> None:
    """Order a visit's diagnoses: by Encounter.diagnosis rank, confirmed first, then time."""

    def order(c: ConditionRecord) -> tuple[int, bool, dt.datetime, int]:
        return (
            visit.ranks.get(c.key, 10_000),
            not c.confirmed,
            c.when or visit.start,
            c.where.line or 0,
        )

    visit.diagnoses.sort(key=order)


def note_for_case(text: str, *, strip_assessment: bool = True) -> str:
    """A clinical note as stored in a case: cut before its first assessment/plan heading (when
    ``strip_assessment``), trailing spaces and blank lines removed (tokens cost CPU time)."""
    if strip_assessment and (m := _ASSESSMENT_HEADING.search(text)):
        text = text[: m.start()]
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def _charset(content_type: str | None) -> str:
    m = re.search(r"charset\s*=\s*\"?([\w.-]+)", content_type or "", re.IGNORECASE)
    return m.group(1) if m else "utf-8"


def _visit_at(
    visits: list[_Visit], starts: list[dt.datetime], when: dt.datetime | None
) -> _Visit | None:
    """The encounter in progress at ``when`` (for resources without an encounter reference)."""
    if when is None:
        return None
    i = bisect.bisect_right(starts, when) - 1
    if i < 0:
        return None
    v = visits[i]
    end = v.record.end
    inside = when <= end if end is not None else when.date() == v.start.date()
    return v if inside else None


def _distinct(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for x in items if x))


def _optional_module(name: str) -> Any:
    """Import a feddx module that may not be installed yet; ``None`` if it is absent."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None
