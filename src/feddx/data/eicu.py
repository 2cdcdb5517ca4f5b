"""eICU Collaborative Research Database (the demo or the full release): one case per ICU unit stay.

The eICU-CRD (PhysioNet; the demo covers 2,016 stays of 186 US hospitals, the full release
200,859 stays of 208) ships as relational CSV tables keyed by ``patientunitstayid``. This loader
reads a directory of them (``name.csv`` or ``name.csv.gz``, as PhysioNet publishes them):

- ``hospital.csv``: the institution (``eICU hospital <hospitalid>``) and its US census region
  (Midwest/South/West/Northeast; blank -> ``None``). Bed count and teaching status are not
  carried (the case schema has no field for them).
- ``patient.csv``: one row per unit stay: age (``"> 89"``, eICU's de-identified top band,
  becomes 90), sex, the APACHE admission diagnosis, unit type, admission source, stay type,
  admission weight and height, and the keys that link a patient's stays (``uniquepid``,
  ``patienthealthsystemstayid``, ``unitvisitnumber``, ``hospitaldischargeyear``).
- ``diagnosis.csv``: the label (below), and the diagnoses of earlier stays for the history.
- ``admissiondx.csv``: the APACHE admission answers (operative or not, organ system, elective,
  transfer, MI location, grafts, pre-op ejection fraction, ...).
- ``pasthistory.csv``: the past medical history -> ``history.prior_conditions``.
- ``allergy.csv``: allergies (one ``allergies`` finding).
- ``note.csv``: the structured parts of the admission note that describe the patient: review of
  systems (present or denied symptoms), smoking and alcohol use, family history, reason for
  readmission. Procedure notes, interventions and note-layout options are not findings.

``apachepatientresult.csv`` is not read: it holds outcomes (mortality, length of stay) and
day-one severity scores, i.e. what happened after admission.

**Label.** The stay's primary diagnosis: the ``diagnosispriority == "Primary"`` row with the
earliest ``diagnosisoffset`` (ties: lowest ``diagnosisid``), i.e. the working diagnosis of the
admission. Its name comes from ``diagnosisstring``, a path in eICU's diagnosis tree,
``organ system | group | diagnosis | qualifier | ...``
("cardiovascular|shock / hypotension|sepsis|severe"). The name is the third level, the
diagnosis itself; the levels below it are mostly qualifiers (severity, side, cause, acquisition:
"severe", "right", "due to sepsis", "community-acquired") that would split one disease into
many rare labels and are not readable alone. The fourth level replaces the third only where
it names a subtype that is a diagnosis in its own right (:func:`eicu_diagnosis_name`):
"stroke|hemorrhagic stroke", "anemia|acute blood loss anemia", "AV block|complete heart block",
and the acute coronary syndromes (STEMI, NSTEMI, unstable angina). On the demo this gives 216
labels for 1,370 stays instead of 483 full paths.

**ICD-10.** ``icd9code`` mixes ICD-9 and ICD-10 ("428.0, I50.9"); ICD-10 codes are the tokens
that start with a letter (ICD-9's external-cause ``E8xx``/``E9xx`` and ``V`` codes excluded).
A label's code must not depend on the qualifier of one stay ("sepsis|severe" carries R65.20,
plain "sepsis" A41.9), or a correct answer could score as a chapter miss: each label gets one
code, the most frequent ICD-10 code of the diagnosis rows that name exactly that diagnosis
(no qualifier), else of all its rows, else :func:`feddx.data.icd10.lookup_icd10`.

**No label leakage.** Findings come only from what is known at admission (patient.csv,
admissiondx.csv, allergies, the admission note); no ``diagnosis.csv`` entry of the stay itself
becomes a finding. The APACHE admission diagnosis ("Sepsis, pulmonary") is kept: it is the
reason for admission, recorded at admission in its own vocabulary.

**History.** ``prior_conditions`` come from ``pasthistory.csv`` as readable phrases
("CHF - class II", "metastases: liver"). ``encounters`` are the same patient's (``uniquepid``)
earlier unit stays, oldest first: earlier unit stays of the same hospitalization
(lower ``unitvisitnumber``) and stays of hospitalizations discharged in an earlier year. eICU
has no dates and ``patienthealthsystemstayid`` is not chronological (the demo has a patient whose
higher id was discharged a year earlier), so hospitalizations discharged in the same year are
of unknown order and are left out rather than risk putting a later stay into the history.

**Skips.** A stay without a primary diagnosis is skipped ("no primary diagnosis") unless
``keep_unlabeled``; malformed rows of any file are skipped with file, line and reason (never
their text); a missing file is a :class:`~feddx.errors.DataError` naming it. Each table is read
once, streaming, into per-stay indexes of the few values used, then cases are yielded in
``patient.csv`` order, so the full 200k-stay release loads in bounded memory and one pass.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar, TypeVar

from pydantic import Field, ValidationError

from feddx.data.csvio import allow_long_fields
from feddx.data.icd10 import curated_map, label_key, lookup_icd10, normalize_icd10
from feddx.data.report import LoadReport, describe_error
from feddx.data.schema import Case, Encounter, Finding, History, Label, Sex
from feddx.data.sources import register_source
from feddx.errors import DataError
from feddx.settings import Settings

SOURCE = "eicu"

# file stem -> the columns this loader reads (other columns are ignored).
COLUMNS: dict[str, tuple[str, ...]] = {
    "hospital": ("hospitalid", "region"),
    "patient": (
        "patientunitstayid",
        "patienthealthsystemstayid",
        "uniquepid",
        "gender",
        "age",
        "hospitalid",
        "apacheadmissiondx",
        "admissionheight",
        "admissionweight",
        "hospitaldischargeyear",
        "unittype",
        "unitadmitsource",
        "unitvisitnumber",
        "unitstaytype",
    ),
    "diagnosis": (
        "diagnosisid",
        "patientunitstayid",
        "diagnosisoffset",
        "diagnosisstring",
        "icd9code",
        "diagnosispriority",
    ),
    "admissiondx": (
        "patientunitstayid",
        "admitdxenteredoffset",
        "admitdxpath",
        "admitdxname",
        "admitdxtext",
    ),
    "pasthistory": (
        "patientunitstayid",
        "pasthistoryoffset",
        "pasthistorypath",
        "pasthistoryvalue",
    ),
    "allergy": ("patientunitstayid", "allergyoffset", "drugname", "allergyname"),
    "note": ("patientunitstayid", "noteoffset", "notepath", "notevalue"),
}
MAX_AGE = 90.0  # eICU writes ages above 89 as "> 89"
MAX_ENCOUNTER_DIAGNOSES = 5
_T = TypeVar("_T")

_SEX: dict[str, Sex] = {"male": "male", "female": "female", "other": "other", "unknown": "unknown"}

# Parents whose children name distinct diagnoses without repeating the parent's head noun.
_SUBTYPES: dict[str, tuple[str, ...]] = {
    "acute coronary syndrome": (
        "acute myocardial infarction",
        "unstable angina",
        "myocardial ischemia",
    ),
}
# ICD-10: a letter, two characters, optional extension. ICD-9 external-cause (E800-E999) and
# supplementary (V01-V91) codes also start with a letter; eICU never uses ICD-10 chapter XX
# transport codes (V00-V99) for a diagnosis, so every V code here is ICD-9.
_ICD10 = re.compile(r"^(?!E\d{3})[A-UW-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?$")
_YES_NO = {"yes": True, "no": False}

# admissiondx.csv question paths (after "admission diagnosis|") -> short finding names.
_ORGAN_SYSTEM = "admission organ system"
_OR_QUESTION = (
    "Was the patient admitted from the O.R. or went to the O.R. within 4 hours of admission?"
)
_ADMITDX_NAMES = {
    "Elective": "elective admission",
    "Patient transferred from another hospital to the current hospital within 48 hours "
    "prior to ICU admission": "transferred from another hospital within 48 h",
    "Non-operative Organ Systems|Organ System": _ORGAN_SYSTEM,
    "Operative Organ Systems|Organ System": _ORGAN_SYSTEM,
}
_ADMITDX_APACHE = "Additional APACHE  Information|"  # (sic: two spaces in eICU)

_PAST_PREFIX = "notes/Progress Notes/Past History/"
_PAST_SKIP = "Past History Obtain Options"  # performed / not obtainable: not a condition
_ROS_PREFIX = "notes/Progress Notes/Review Of Systems/Systems/"
_SOCIAL_PREFIX = (
    "notes/Progress Notes/Social History / Family History/Social History/Social History/"
)
_FAMILY_PREFIX = (
    "notes/Progress Notes/Social History / Family History/Family History/Family History/"
)
_READMIT_PREFIX = "notes/Progress Notes/Admission Page One/Reason for Readmission:/"
_SOCIAL_NAMES = {"Smoking Status": "smoking", "Ethanol Use": "alcohol use"}
_SOCIAL_NEGATIVE = {"denies smoking", "none"}
_SOCIAL_FINDINGS = (*_SOCIAL_NAMES.values(), "reason for readmission")
_UNKNOWN_VALUES = {"", "unknown", "smoking history unknown", "other"}
# allergy.csv entries that point elsewhere instead of naming an allergen
_NOT_ALLERGEN = re.compile(r"\b(?:see|refer to)\b|\bcerner\b|\bemr\b|^(?:none|nka|nkda)$")
# "/" separates path levels except inside "s/p" (status post)
_PATH_SPLIT = re.compile(r"(?<!\bs)/(?!p\b)")


class EICUOptions(Settings):
    """How :func:`load_eicu` builds cases.

    Parameters
    ----------
    keep_unlabeled
        Yield stays without a primary diagnosis as unlabeled cases (default: skip them, counted
        as "no primary diagnosis").
    max_history_encounters
        Keep at most this many earlier stays (the most recent); ``None`` keeps all.
    same_hospitalization_history
        Include earlier unit stays of the same hospitalization in the history (default). They
        were known when the patient reached this unit, but a step-down stay after an ICU stay
        usually carries the ICU's diagnosis: turn this off to measure a model on admission data
        alone.
    """

    settings_name: ClassVar[str] = "eicu"

    keep_unlabeled: bool = False
    max_history_encounters: int | None = Field(default=20, ge=0)
    same_hospitalization_history: bool = True


@dataclass
class _Stay:
    """The values of one patient.csv row that a case needs (kept until the case is built)."""

    stay_id: int
    line: int
    patient_id: str
    hospitalization: str
    visit: int | None
    year: int | None
    age: float | None
    sex: Sex | None
    hospital_id: str
    admission_dx: str
    unit_type: str
    admit_source: str
    stay_type: str
    weight: float | None
    height: float | None


@dataclass
class _Primary:
    offset: int
    diagnosis_id: int
    name: str


@dataclass
class _Indexes:
    """Per-stay values from the side tables, keyed by patientunitstayid."""

    primary: dict[int, _Primary] = field(default_factory=dict)
    # earlier-stay diagnoses (primary/major names), kept only for stays that are someone's history
    history_dx: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)
    exact_codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    all_codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    admitdx: dict[int, list[tuple[int, Finding]]] = field(default_factory=dict)
    operative: dict[int, str] = field(default_factory=dict)
    admitdx_diagnosis: dict[int, str] = field(default_factory=dict)
    past: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    allergies: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    notes: dict[int, list[tuple[int, Finding]]] = field(default_factory=dict)


class _RowError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


# --- public helpers ------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def eicu_diagnosis_name(diagnosisstring: str) -> str:
    """The diagnosis name of an eICU ``diagnosisstring`` (see the module docstring).

    ``"cardiovascular|ventricular disorders|congestive heart failure"`` ->
    ``"Congestive heart failure"``; ``"cardiovascular|shock / hypotension|sepsis|severe"`` ->
    ``"Sepsis"``; ``"neurologic|disorders of vasculature|stroke|hemorrhagic stroke"`` ->
    ``"Hemorrhagic stroke"``. A path of fewer than three levels gives its last level. Raises
    :class:`ValueError` for an empty string.
    """
    parts = [" ".join(p.split()) for p in diagnosisstring.split("|")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("empty diagnosisstring")
    if len(parts) < 3:
        return _display(parts[-1])
    name = parts[2]
    if len(parts) > 3 and _names_subtype(name, parts[3]):
        name = parts[3]
    return _display(name)


def eicu_icd10(icd_field: str) -> str | None:
    """The first ICD-10 code of an eICU ``icd9code`` field, normalized ("428.0, I50.9" ->
    "I50.9"); ``None`` when the field holds only ICD-9 codes or nothing."""
    for token in icd_field.split(","):
        token = token.strip().upper()
        if _ICD10.match(token):
            try:
                return normalize_icd10(token)
            except ValueError:
                continue
    return None


def parse_eicu_age(value: str) -> float | None:
    """An eICU age in years: ``"> 89"`` -> 90, ``""`` -> ``None``; :class:`ValueError` for
    anything else that is not a number from 0 to 130."""
    text = value.strip()
    if not text:
        return None
    if text.replace(" ", "") == ">89":
        return MAX_AGE
    age = float(text)  # ValueError for non-numbers
    if not 0 <= age <= 130:
        raise ValueError("age out of range")
    return age


def load_eicu(path: Path, report: LoadReport, options: EICUOptions | None = None) -> Iterator[Case]:
    """Iterate the cases of the eICU tables in directory ``path``, one per ICU unit stay.

    The files are checked up front: a missing directory or table is a
    :class:`~feddx.errors.DataError` naming it; unreadable bytes or a header without the needed
    columns raise it while reading. Everything else is skipped row by row into ``report``.
    """
    if not path.is_dir():
        raise DataError(f"eicu: expected the directory of the eICU CSV tables, got {path}")
    files = {stem: _table(path, stem) for stem in COLUMNS}
    return _load(files, report, options or EICUOptions())


# --- naming ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _display(name: str) -> str:
    """One spelling per diagnosis: the curated map's where it has one, else eICU's own with the
    first letter raised when the first word is plain lower case ("DKA", "s/p CABG" stay)."""
    entry = curated_map().get(label_key(name))
    if entry is not None:
        return entry.name
    first = name.split(" ", 1)[0]
    if first.isalpha() and first.islower():
        return name[0].upper() + name[1:]
    return name


def _heads(parent: str) -> set[str]:
    # "GI obstruction / ileus" -> {"obstruction", "ileus"}; "bone fracture(s)" -> {"fracture"}
    heads = set()
    for alternative in parent.split("/"):
        words = re.findall(r"[a-z0-9]+", alternative.lower().replace("(s)", ""))
        if words:
            heads.add(words[-1])
            heads.add(words[-1].removesuffix("s"))
    return heads


def _names_subtype(parent: str, child: str) -> bool:
    """Whether ``child`` (the level below ``parent``) is itself a diagnosis name."""
    p, c = parent.lower(), child.lower()
    if any(c.startswith(s) for s in _SUBTYPES.get(p, ())):
        return True
    # "sepsis with multi-organ dysfunction", "dementia, unknown etiology": the parent qualified
    if c == p or re.match(re.escape(p) + r"\s*(?:,|with\b|without\b|due to\b)", c):
        return False
    words = set(re.findall(r"[a-z0-9]+", c))
    return bool(words & _heads(parent))


def _prior_condition(path: str, value: str) -> str | None:
    """A readable past-history phrase from a pasthistory.csv path and value, ``None`` for the
    entries that are not conditions ("Past History Obtain Options")."""
    text = " ".join(value.split())
    if not text:
        return None
    rest = path.removeprefix(_PAST_PREFIX)
    if rest.startswith(_PAST_SKIP):
        return None
    rest = rest.removeprefix("Organ Systems/")
    if rest.endswith("/" + value):
        rest = rest[: -len(value) - 1]
    levels = [lv.strip() for lv in _PATH_SPLIT.split(rest) if lv.strip()]
    if levels and levels[-1].lower() == "multiple":
        levels.pop()
    if len(levels) < 2:  # no condition level below the organ system: the value stands alone
        return text
    node = _node_display(levels[-1])
    return text if _value_names(text, node) else f"{node}: {text}"


def _node_display(node: str) -> str:
    return _lower_words(re.sub(r"\s*\((?:R|only)\)", "", node))


def _lower_words(text: str) -> str:
    # lower case, except acronyms ("MI", "PTCA", "O.R.")
    return " ".join(w if w.isupper() else w.lower() for w in text.split())


def _value_names(value: str, node: str) -> bool:
    """Whether a history value already names its condition ("CHF - class II" under
    "Congestive Heart Failure"), so that the condition need not be repeated."""
    v = value.lower()
    n = re.sub(r"\s*\([^)]*\)", "", node.lower()).strip()
    if not n or n in v or n.removesuffix("s") in v:
        return True
    tokens = re.findall(r"[a-z0-9/]+", v)
    words = re.findall(r"[a-z0-9]+", n)
    acronym = "".join(w[0] for w in words) if len(words) >= 2 else ""
    first = tokens[0] if tokens else ""
    if acronym and (first == acronym or (len(acronym) >= 3 and first.startswith(acronym))):
        return True
    return len(first) >= 4 and first in words


# --- reading --------------------------------------------------------------------------------


def _table(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"eicu: missing table {stem}.csv (or {stem}.csv.gz) in {directory}")


def _open_binary(file: Path) -> IO[bytes]:
    if file.suffix == ".gz":
        return gzip.open(file, "rb")  # type: ignore[return-value]  # GzipFile is an IO[bytes]
    return file.open("rb")


def _decoded(binary: IO[bytes], name: str) -> Iterator[str]:
    # Line by line, so that a bad byte is reported at its own line.
    try:
        for number, raw in enumerate(binary, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{name}: line {number} is not UTF-8 text ({e.reason})") from e
            yield line.removeprefix("\ufeff") if number == 1 else line
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}") from e


def _rows(file: Path, stem: str, report: LoadReport) -> Iterator[tuple[int, dict[str, str]]]:
    """The (line, {column: value}) records of one table, limited to the columns in
    :data:`COLUMNS`; records with the wrong number of fields are skipped into ``report``."""
    name = file.name
    allow_long_fields()
    try:
        binary = _open_binary(file)
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror or e}") from e
    with binary:
        reader = csv.reader(_decoded(binary, name))
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise DataError(f"{name}: unreadable header ({e})") from e
        if header is None:
            raise DataError(f"{name}: empty file, expected an eICU header")
        index = {h.strip().lower(): i for i, h in enumerate(header)}
        missing = [c for c in COLUMNS[stem] if c not in index]
        if missing:
            raise DataError(
                f"{name}: not an eICU {stem} table, missing column(s) {', '.join(missing)}"
            )
        wanted = [(c, index[c]) for c in COLUMNS[stem]]
        while True:
            try:
                row = next(reader, None)
            except csv.Error as e:
                report.skip(name, reader.line_num, "malformed CSV row", str(e)[:200])
                continue
            if row is None:
                return
            if not row:
                continue
            if len(row) != len(header):
                report.skip(
                    name,
                    reader.line_num,
                    "wrong number of columns",
                    f"{len(row)} fields, header has {len(header)}",
                )
                continue
            yield reader.line_num, {c: row[i] for c, i in wanted}


def _int(value: str, column: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise _RowError(f"invalid {column}", f"column {column} is not an integer") from None


def _optional_number(text: str, low: float, high: float) -> float | None:
    """A measurement, ``None`` when blank or implausible (0 kg, 900 cm: entry errors, left
    out); :class:`ValueError` when not a number."""
    text = text.strip()
    if not text:
        return None
    number = float(text)
    return number if low <= number <= high else None


def _stay_rows(
    file: Path, stem: str, report: LoadReport, stays: dict[int, _Stay]
) -> Iterator[tuple[int, int, dict[str, str]]]:
    """The rows of a side table with a valid stay id of a loaded stay, as (line, stay, row)."""
    for line, row in _rows(file, stem, report):
        try:
            stay = _int(row["patientunitstayid"], "patientunitstayid")
        except _RowError as e:
            report.skip(file.name, line, e.reason, e.detail)
            continue
        if stay not in stays:
            report.skip(file.name, line, "unknown patientunitstayid", f"stay {stay}")
            continue
        yield line, stay, row


def _offset(
    row: dict[str, str], column: str, file: Path, line: int, report: LoadReport
) -> int | None:
    try:
        return _int(row[column], column)
    except _RowError as e:
        report.skip(file.name, line, e.reason, e.detail)
        return None


# --- tables ----------------------------------------------------------------------------------


def _read_hospitals(file: Path, report: LoadReport) -> dict[str, str | None]:
    regions: dict[str, str | None] = {}
    for line, row in _rows(file, "hospital", report):
        hid = row["hospitalid"].strip()
        if not hid.isdigit():
            report.skip(
                file.name, line, "invalid hospitalid", "column hospitalid is not an integer"
            )
            continue
        if hid in regions:
            report.skip(file.name, line, "duplicate hospitalid", f"hospital {hid}")
            continue
        regions[hid] = row["region"].strip() or None
    return regions


def _parse_stay(line: int, row: dict[str, str], problems: list[str]) -> _Stay:
    """The stay of one patient.csv row. A bad stay id, age or sex rejects the row
    (:class:`_RowError`); a bad value in a secondary column (weight, height, visit number,
    discharge year) only drops that value, and its column is appended to ``problems``."""
    stay_id = _int(row["patientunitstayid"], "patientunitstayid")
    try:
        age = parse_eicu_age(row["age"])
    except ValueError:
        raise _RowError("invalid age", "column age is not a number of years") from None
    gender = row["gender"].strip().lower()
    if gender and gender not in _SEX:
        raise _RowError("invalid gender", "column gender is not Male/Female/Other/Unknown")

    def secondary(column: str, parse: Callable[[str], _T]) -> _T | None:
        text = row[column].strip()
        if not text:
            return None
        try:
            return parse(text)
        except ValueError:
            problems.append(column)
            return None

    return _Stay(
        stay_id=stay_id,
        line=line,
        patient_id=row["uniquepid"].strip(),
        hospitalization=row["patienthealthsystemstayid"].strip(),
        visit=secondary("unitvisitnumber", int),
        year=secondary("hospitaldischargeyear", int),
        age=age,
        sex=_SEX[gender] if gender else None,
        hospital_id=row["hospitalid"].strip(),
        admission_dx=" ".join(row["apacheadmissiondx"].split()),
        unit_type=row["unittype"].strip(),
        admit_source=row["unitadmitsource"].strip(),
        stay_type=row["unitstaytype"].strip(),
        weight=secondary("admissionweight", lambda t: _optional_number(t, 0.5, 500)),
        height=secondary("admissionheight", lambda t: _optional_number(t, 25, 250)),
    )


def _read_stays(file: Path, report: LoadReport) -> dict[int, _Stay]:
    stays: dict[int, _Stay] = {}
    for line, row in _rows(file, "patient", report):
        problems: list[str] = []
        try:
            stay = _parse_stay(line, row, problems)
        except _RowError as e:
            report.skip(file.name, line, e.reason, e.detail)
            continue
        if stay.stay_id in stays:
            report.skip(file.name, line, "duplicate patientunitstayid", f"stay {stay.stay_id}")
            continue
        for column in problems:
            # The stay loads; only this value is left out, and that is reported.
            report.skip(file.name, line, "invalid value dropped", f"column {column}")
        stays[stay.stay_id] = stay
    return stays


def _earlier_stays(stays: dict[int, _Stay], same_hospitalization: bool) -> dict[int, list[int]]:
    """For each stay, the same patient's stays known to precede it, oldest first."""
    by_patient: dict[str, list[_Stay]] = defaultdict(list)
    for s in stays.values():
        if s.patient_id:
            by_patient[s.patient_id].append(s)
    earlier: dict[int, list[int]] = {}
    for group in by_patient.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda s: (s.year or 0, s.hospitalization, s.visit or 0))
        for s in group:
            before = [
                t
                for t in group
                if (
                    same_hospitalization
                    and t.hospitalization == s.hospitalization
                    and t.visit is not None
                    and s.visit is not None
                    and t.visit < s.visit
                )
                or (
                    t.hospitalization != s.hospitalization
                    and t.year is not None
                    and s.year is not None
                    and t.year < s.year
                )
            ]
            if before:
                earlier[s.stay_id] = [t.stay_id for t in before]
    return earlier


def _read_diagnoses(
    file: Path, report: LoadReport, stays: dict[int, _Stay], history_stays: set[int], ix: _Indexes
) -> None:
    for line, stay, row in _stay_rows(file, "diagnosis", report, stays):
        offset = _offset(row, "diagnosisoffset", file, line, report)
        if offset is None:
            continue
        try:
            name = eicu_diagnosis_name(row["diagnosisstring"])
        except ValueError:
            report.skip(file.name, line, "empty diagnosisstring")
            continue
        code = eicu_icd10(row["icd9code"])
        if code is not None:
            ix.all_codes[name][code] += 1
            leaf = row["diagnosisstring"].rsplit("|", 1)[-1]
            if _display(" ".join(leaf.split())) == name:
                ix.exact_codes[name][code] += 1
        priority = row["diagnosispriority"].strip().lower()
        if priority == "primary":
            did_text = row["diagnosisid"].strip()
            did = int(did_text) if did_text.isdigit() else sys.maxsize
            current = ix.primary.get(stay)
            if current is None or (offset, did) < (current.offset, current.diagnosis_id):
                ix.primary[stay] = _Primary(offset, did, name)
        if stay in history_stays and priority in ("primary", "major"):
            rank = 0 if priority == "primary" else 1
            ix.history_dx.setdefault(stay, []).append((rank, offset, name))


def _read_admitdx(file: Path, report: LoadReport, stays: dict[int, _Stay], ix: _Indexes) -> None:
    for line, stay, row in _stay_rows(file, "admissiondx", report, stays):
        offset = _offset(row, "admitdxenteredoffset", file, line, report)
        if offset is None:
            continue
        parts = [p.strip() for p in row["admitdxpath"].split("|")]
        if parts and parts[0].lower() == "admission diagnosis":
            parts = parts[1:]
        if len(parts) < 2 or not parts[-1]:
            report.skip(file.name, line, "invalid admitdxpath", f"{len(parts)} levels")
            continue
        if parts[0] == "All Diagnosis":
            # All Diagnosis|Operative|Diagnosis|<system>|<diagnosis>: the APACHE admission
            # diagnosis again (patient.csv has it), and whether the admission was operative.
            if len(parts) >= 3:
                ix.operative.setdefault(stay, parts[1].lower())
            ix.admitdx_diagnosis.setdefault(stay, " ".join(parts[-1].split()))
            continue
        if parts[0] == _OR_QUESTION:
            # APACHE's definition of an operative admission: the same fact as the
            # Operative/Non-operative branch above, kept as one "admission type" finding.
            answer = parts[-1].lower()
            if answer in _YES_NO:
                ix.operative.setdefault(stay, "operative" if _YES_NO[answer] else "non-operative")
            continue
        finding = _admitdx_finding(parts, row)
        if finding is not None:
            ix.admitdx.setdefault(stay, []).append((offset, finding))


def _admitdx_finding(parts: list[str], row: dict[str, str]) -> Finding | None:
    question = "|".join(parts[:-1])
    answer = " ".join(parts[-1].split())
    if question.startswith(_ADMITDX_APACHE):
        name = question.removeprefix(_ADMITDX_APACHE).rsplit("|", 1)[-1].rstrip("?").strip()
    else:
        name = _ADMITDX_NAMES.get(question, parts[-2].rstrip("?").strip())
    unit = None
    if name.endswith("(%)"):
        name, unit = name.removesuffix("(%)").strip(), "%"
    if answer.lower() == "specified":  # the number is in admitdxtext ("Pre-op EF: 55")
        answer = " ".join(row["admitdxtext"].split())
    if not name or not answer or answer.lower() in _UNKNOWN_VALUES:
        return None
    name = _lower_words(name)
    value: str | float | None = answer
    negated = False
    if answer.lower() in _YES_NO:
        value, negated = None, not _YES_NO[answer.lower()]
    elif answer.lower() == "none":
        value, negated = None, True
    elif answer == parts[-2]:  # the question repeated as its own answer: "yes"
        value = None
    else:
        with contextlib.suppress(ValueError):
            value = float(answer)
    return Finding(
        name=name, value=value, unit=unit if value is not None else None, negated=negated
    )


def _read_past(file: Path, report: LoadReport, stays: dict[int, _Stay], ix: _Indexes) -> None:
    for line, stay, row in _stay_rows(file, "pasthistory", report, stays):
        offset = _offset(row, "pasthistoryoffset", file, line, report)
        if offset is None:
            continue
        condition = _prior_condition(row["pasthistorypath"], row["pasthistoryvalue"])
        if condition is not None:
            ix.past.setdefault(stay, []).append((offset, condition))


def _read_allergies(file: Path, report: LoadReport, stays: dict[int, _Stay], ix: _Indexes) -> None:
    for line, stay, row in _stay_rows(file, "allergy", report, stays):
        offset = _offset(row, "allergyoffset", file, line, report)
        if offset is None:
            continue
        allergen = " ".join((row["allergyname"].strip() or row["drugname"]).split()).lower()
        if allergen and not _NOT_ALLERGEN.search(allergen):
            ix.allergies.setdefault(stay, []).append((offset, allergen))


def _read_notes(file: Path, report: LoadReport, stays: dict[int, _Stay], ix: _Indexes) -> None:
    for line, stay, row in _stay_rows(file, "note", report, stays):
        finding = _note_finding(row["notepath"], " ".join(row["notevalue"].split()))
        if finding is None:
            continue
        offset = _offset(row, "noteoffset", file, line, report)
        if offset is not None:
            ix.notes.setdefault(stay, []).append((offset, finding))


def _note_finding(path: str, value: str) -> Finding | None:
    """The finding of one structured note entry, ``None`` for entries that are not about the
    patient (layout options, procedures, interventions)."""
    if not value:
        return None
    low = value.lower()
    if path.startswith(_ROS_PREFIX):
        rest = path.removeprefix(_ROS_PREFIX)
        if '/Print "Negative"/' in rest:  # a whole system reviewed and negative
            system = rest.split('/Print "Negative"/', 1)[0]
            return Finding(name=f"{_node_display(system)} symptoms", negated=True)
        if low.startswith("denies "):
            return Finding(name=value[len("denies ") :], negated=True)
        return Finding(name=value)
    if path.startswith(_SOCIAL_PREFIX):
        topic = path.removeprefix(_SOCIAL_PREFIX).split("/", 1)[0]
        name = _SOCIAL_NAMES.get(topic)
        if name is None or low in _UNKNOWN_VALUES:
            return None
        if low in _SOCIAL_NEGATIVE:
            return Finding(name=name, negated=True)
        return Finding(name=name, value=value)
    if path.startswith(_FAMILY_PREFIX):
        return Finding(name=f"family history of {value if value.isupper() else low}")
    if path.startswith(_READMIT_PREFIX):
        return Finding(name="reason for readmission", value=value)
    return None


# --- cases -----------------------------------------------------------------------------------


def _first_distinct(items: Iterable[tuple[int, str]]) -> list[str]:
    seen: dict[str, str] = {}
    for _, text in sorted(items, key=lambda t: t[0]):
        seen.setdefault(text.lower(), text)
    return list(seen.values())


def _findings(stay: _Stay, ix: _Indexes) -> tuple[Finding, ...]:
    """The admission findings, most informative first (the prompt renderer drops from the end).

    Order: admission diagnosis and type, organ system, symptoms present, the APACHE answers,
    where from and to which unit, social history, weight and height, allergies, and last the
    (often long) list of symptoms denied in the review of systems. One finding per name: the
    first wins, so a symptom reported present is not contradicted by a later denial.
    """
    sid = stay.stay_id
    out: list[Finding] = []
    admission_dx = stay.admission_dx or ix.admitdx_diagnosis.get(sid, "")
    if admission_dx:
        out.append(Finding(name="admission diagnosis", value=admission_dx))
    if sid in ix.operative:
        out.append(Finding(name="admission type", value=ix.operative[sid]))
    admitdx = [f for _, f in sorted(ix.admitdx.get(sid, []), key=lambda t: t[0])]
    notes = [f for _, f in sorted(ix.notes.get(sid, []), key=lambda t: t[0])]
    social = [f for f in notes if f.name in _SOCIAL_FINDINGS]
    symptoms = [f for f in notes if f.name not in _SOCIAL_FINDINGS]
    out.extend(f for f in admitdx if f.name == _ORGAN_SYSTEM)
    out.extend(f for f in symptoms if not f.negated)
    out.extend(f for f in admitdx if f.name != _ORGAN_SYSTEM)
    if stay.admit_source:
        out.append(Finding(name="admitted from", value=stay.admit_source))
    if stay.unit_type:
        out.append(Finding(name="ICU type", value=stay.unit_type))
    if stay.stay_type and stay.stay_type.lower() != "admit":
        out.append(Finding(name="ICU stay type", value=stay.stay_type))
    out.extend(social)
    if stay.weight is not None:
        out.append(Finding(name="weight", value=stay.weight, unit="kg"))
    if stay.height is not None:
        out.append(Finding(name="height", value=stay.height, unit="cm"))
    allergens = _first_distinct(ix.allergies.get(sid, []))
    if allergens:
        out.append(Finding(name="allergies", value=", ".join(allergens)))
    out.extend(f for f in symptoms if f.negated)
    unique: dict[str, Finding] = {}
    for f in out:
        unique.setdefault(f.name.lower(), f)
    return tuple(unique.values())


def _encounter(stay: _Stay, ix: _Indexes) -> Encounter:
    entries = sorted(ix.history_dx.get(stay.stay_id, []))
    diagnoses = list(dict.fromkeys(name for _, _, name in entries))[:MAX_ENCOUNTER_DIAGNOSES]
    return Encounter(
        kind=stay.unit_type or None,
        reason=stay.admission_dx or ix.admitdx_diagnosis.get(stay.stay_id) or None,
        diagnoses=tuple(diagnoses),
        institution=_institution(stay),
    )


def _institution(stay: _Stay) -> str | None:
    return f"eICU hospital {stay.hospital_id}" if stay.hospital_id else None


def _label_code(name: str, ix: _Indexes) -> str | None:
    for counts in (ix.exact_codes.get(name), ix.all_codes.get(name)):
        if counts:
            return counts.most_common(1)[0][0]
    return lookup_icd10(name)


def _load(files: dict[str, Path], report: LoadReport, options: EICUOptions) -> Iterator[Case]:
    regions = _read_hospitals(files["hospital"], report)
    stays = _read_stays(files["patient"], report)
    earlier = _earlier_stays(stays, options.same_hospitalization_history)
    history_stays = {s for before in earlier.values() for s in before}
    ix = _Indexes()
    _read_diagnoses(files["diagnosis"], report, stays, history_stays, ix)
    _read_admitdx(files["admissiondx"], report, stays, ix)
    _read_past(files["pasthistory"], report, stays, ix)
    _read_allergies(files["allergy"], report, stays, ix)
    _read_notes(files["note"], report, stays, ix)

    patient_file = files["patient"].name
    codes: dict[str, str | None] = {}
    for stay in stays.values():
        primary = ix.primary.get(stay.stay_id)
        if primary is None and not options.keep_unlabeled:
            report.skip(patient_file, stay.line, "no primary diagnosis", f"stay {stay.stay_id}")
            continue
        label = None
        if primary is not None:
            if primary.name not in codes:
                codes[primary.name] = _label_code(primary.name, ix)
            label = Label(diagnosis=primary.name, icd10=codes[primary.name])
        before = [stays[s] for s in earlier.get(stay.stay_id, [])]
        if options.max_history_encounters is not None:
            keep = options.max_history_encounters
            before = before[-keep:] if keep > 0 else []
        try:
            case = Case(
                case_id=f"eicu-{stay.stay_id}",
                patient_id=stay.patient_id or None,
                age=stay.age,
                sex=stay.sex,
                findings=_findings(stay, ix),
                history=History(
                    prior_conditions=tuple(_first_distinct(ix.past.get(stay.stay_id, []))),
                    encounters=tuple(_encounter(s, ix) for s in before),
                ),
                region=regions.get(stay.hospital_id),
                institution=_institution(stay),
                source=SOURCE,
                label=label,
            )
        except ValidationError as e:
            report.skip(patient_file, stay.line, "invalid case", describe_error(e))
            continue
        report.n_cases += 1
        yield case


register_source(SOURCE, load_eicu)
