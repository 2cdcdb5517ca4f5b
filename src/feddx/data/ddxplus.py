"""DDXPlus, English release and original French release (v0), into the case schema.

A release is two JSON files (``release_conditions.json``: the 49 pathologies with ICD-10 ids;
``release_evidences.json``: every evidence's question, data type and value meanings) and patient
CSVs with the columns ``AGE, DIFFERENTIAL_DIAGNOSIS, SEX, PATHOLOGY, EVIDENCES,
INITIAL_EVIDENCE``. PATH may be

- a directory: the JSON files (plain or as ``release_*.zip``) and every patient file in it
  (``*.csv``, the official ``release_*_patients.zip`` archives, or their extracted
  extension-less ``release_*_patients`` files), in name order;
- one patient CSV or zip, with the JSON files beside it.

Rows are streamed (the official training split has 1.3M rows): nothing holds more than one row.

Decoding. Every evidence becomes one :class:`~feddx.data.schema.Finding` named by a compact form
of its question (:mod:`feddx.data.ddxplus_names`):

- binary (``E_91``): a present finding, "fever";
- categorical on a numeric scale (``E_56_@_8``): "pain intensity: 8";
- categorical or multi-choice with value meanings (``E_130_@_V_86``, ``E_54_@_V_154`` and
  ``E_54_@_V_183``): one finding with every value, "pain character: tedious, heavy";
  a value meaning "Y"/"N" becomes a present/negated finding ("no travel abroad (4 weeks)").

The INITIAL_EVIDENCE (the patient's chief complaint) comes first, then the other symptoms, then
the antecedents, each in release order (which keeps a question's sub-questions together). The
antecedents stay findings rather than ``history.prior_conditions``: most are exposures and risk
factors ("lives with 4+ people", "smokes cigarettes", "no travel abroad"), not diagnoses, and
some are negated, which a list of prior conditions cannot say; as the last findings they are
also the first thing prompt truncation drops, which is the right priority. For experiments on
the patient's own history, ``antecedents_as_history=True`` (source ``ddxplus-history``) moves
them instead into ``history.prior_conditions`` as phrases ("smokes cigarettes", "no travel
abroad (4 weeks)"), negations written out, so DDXPlus has cases with a history.

Labels. Both releases map the pathology and every differential entry to the English name
(``cond-name-eng``) and its ICD-10 id, so English and v0 cases share one label space. A row
with an unknown code, value, pathology or a malformed column is skipped and counted in the
:class:`~feddx.data.report.LoadReport` with its file, line and the code or column at fault.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError

from feddx.data.csvio import allow_long_fields
from feddx.data.ddxplus_names import VALUE_FIXES, finding_name
from feddx.data.icd10 import normalize_icd10
from feddx.data.report import LoadReport, describe_error
from feddx.data.schema import Case, DifferentialEntry, Finding, History, Label, Sex
from feddx.data.sources import register_source
from feddx.errors import DataError

SOURCE = "ddxplus"
SOURCE_V0 = "ddxplus-v0"
SOURCE_HISTORY = "ddxplus-history"  # the English release, antecedents moved into the history
COLUMNS = ("AGE", "DIFFERENTIAL_DIAGNOSIS", "SEX", "PATHOLOGY", "EVIDENCES", "INITIAL_EVIDENCE")
CONDITIONS = "release_conditions"
EVIDENCES = "release_evidences"
VALUE_SEPARATOR = "_@_"

Release = Literal["en", "v0"]
DataType = Literal["B", "C", "M"]
_SEX: dict[str, Sex] = {"M": "male", "F": "female"}
_ENGLISH_CODE = re.compile(r"E_\d+")
_YES, _NO = "Y", "N"
# Far above any real cell (the longest EVIDENCES or DIFFERENTIAL_DIAGNOSIS cell of the shared
# samples is 1,286 characters); caps what the literal_eval fallback will parse.
_MAX_CELL = 100_000
# Bounds the shared-Finding cache on odd data; the official release has a few thousand keys.
_MAX_CACHED_FINDINGS = 200_000


class RowError(ValueError):
    """A patient row that cannot become a case: ``reason`` is the short counting key, ``detail``
    names the column and code at fault (never patient text)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason} ({detail})")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Evidence:
    """One evidence of ``release_evidences.json``, ready for decoding.

    ``values`` maps each raw value as written in a patient row (``"V_154"``, ``"8"``,
    ``"amygdale_G_"``) to what it means: an English phrase, or the number of a numeric scale.
    ``group`` is the release's ``code_question``: the question this one follows up ("where is
    the pain" follows "pain"); ``position`` and ``group_position`` are release-order indices.
    """

    code: str
    name: str
    data_type: DataType
    is_antecedent: bool
    position: int
    values: Mapping[str, str | int]
    group: str
    group_position: int

    @property
    def rank(self) -> tuple[bool, int, bool, int]:
        """Sort key: symptoms before antecedents, then release order of the question group,
        the group's own question before its follow-ups."""
        return (self.is_antecedent, self.group_position, self.code != self.group, self.position)


@dataclass(frozen=True)
class Condition:
    """A pathology under its English name, with its ICD-10 id."""

    name: str
    icd10: str | None


@dataclass
class DDXPlusStats:
    """What a load decoded, beyond the skip counts of :class:`LoadReport`.

    ``evidences`` counts the EVIDENCES entries of the loaded rows: every one of them was decoded
    into a finding (a row with any undecodable entry is skipped as a whole).
    """

    rows: int = 0
    evidences: int = 0
    findings: int = 0
    codes: set[str] = field(default_factory=set)
    cases_per_file: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class PatientFile:
    """A patient CSV on disk, or a CSV member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def display(self) -> str:
        """How reports name the file: ``x.csv`` or ``release_test_patients.zip/release_test_patients``."""
        return f"{self.path.name}/{self.member}" if self.member else self.path.name

    @property
    def stem(self) -> str:
        """The case-id prefix: the file name without extension."""
        return Path(self.member).stem if self.member else self.path.stem


class DDXPlusRelease:
    """The conditions and evidences of one release, indexed for decoding rows."""

    def __init__(
        self,
        conditions: Sequence[Condition],
        aliases: Mapping[str, Condition],
        evidences: Mapping[str, Evidence],
    ) -> None:
        self.conditions = tuple(conditions)
        self.evidences = dict(evidences)
        self._aliases = dict(aliases)
        self._findings: dict[tuple[str, tuple[str, ...]], Finding] = {}
        codes = list(self.evidences)
        self.release: Release = (
            "en" if codes and all(_ENGLISH_CODE.fullmatch(c) for c in codes) else "v0"
        )

    @classmethod
    def from_path(cls, path: Path) -> DDXPlusRelease:
        """Read the two JSON files of the release at ``path`` (a directory, or a file in it)."""
        directory = _json_dir(path)
        conditions, aliases = _read_conditions(directory)
        return cls(conditions, aliases, _read_evidences(directory))

    def condition(self, name: str) -> Condition | None:
        """The condition a pathology name denotes, in either language (None if unknown)."""
        return self._aliases.get(name.strip())

    def decode_evidences(self, evidences: Sequence[str], initial: str) -> tuple[Finding, ...]:
        """The findings of one patient: the initial evidence first, then symptoms, then
        antecedents. Raises :class:`RowError` naming the first code that cannot be decoded."""
        return tuple(f for _, f in self._decode_evidences(evidences, initial))

    def _decode_evidences(
        self, evidences: Sequence[str], initial: str
    ) -> list[tuple[Evidence, Finding]]:
        values_by_code: dict[str, list[str]] = {}
        for item in evidences:
            code, sep, value = item.partition(VALUE_SEPARATOR)
            ev = self.evidences.get(code)
            if ev is None:
                raise RowError("unknown evidence code", f"EVIDENCES: {_clip(code)}")
            if ev.data_type == "B":
                if sep:
                    raise RowError("unexpected evidence value", f"EVIDENCES: {code} is binary")
                values_by_code.setdefault(code, [])
                continue
            if not value:
                raise RowError("missing evidence value", f"EVIDENCES: {code} needs a value")
            if value not in ev.values:
                raise RowError(
                    "unknown evidence value", f"EVIDENCES: {code}{VALUE_SEPARATOR}{_clip(value)}"
                )
            seen = values_by_code.setdefault(code, [])
            if value not in seen:
                seen.append(value)
        initial = initial.strip()
        if initial:
            ev = self.evidences.get(initial)
            if ev is None:
                raise RowError("unknown evidence code", f"INITIAL_EVIDENCE: {_clip(initial)}")
            if initial not in values_by_code:
                # The chief complaint is present by definition; only a question with a value
                # cannot be added without one.
                if ev.data_type != "B":
                    raise RowError("initial evidence without value", f"INITIAL_EVIDENCE: {initial}")
                values_by_code[initial] = []
        # The chief complaint, then its own follow-ups ("pain location" right after "pain").
        initial_group = self.evidences[initial].group if initial else None
        order = sorted(
            values_by_code,
            key=lambda c: (
                c != initial,
                self.evidences[c].group != initial_group,
                self.evidences[c].rank,
            ),
        )
        return [
            (self.evidences[c], self._finding(self.evidences[c], tuple(values_by_code[c])))
            for c in order
        ]

    def _finding(self, ev: Evidence, values: tuple[str, ...]) -> Finding:
        key = (ev.code, values)
        cached = self._findings.get(key)
        if cached is not None:
            return cached
        if ev.data_type == "C" and len(values) > 1:
            raise RowError("several values for categorical evidence", f"EVIDENCES: {ev.code}")
        meanings = [ev.values[v] for v in values]
        if not meanings:
            finding = Finding(name=ev.name)
        elif len(meanings) == 1 and isinstance(meanings[0], int):
            finding = Finding(name=ev.name, value=meanings[0])
        elif _YES in meanings or _NO in meanings:
            if len(meanings) > 1:
                raise RowError("conflicting evidence values", f"EVIDENCES: {ev.code}")
            finding = Finding(name=ev.name, negated=meanings[0] == _NO)
        else:
            finding = Finding(name=ev.name, value=", ".join(str(m) for m in meanings))
        if len(self._findings) < _MAX_CACHED_FINDINGS:
            self._findings[key] = finding
        return finding

    def row_to_case(
        self,
        row: Mapping[str, str],
        case_id: str,
        source: str,
        *,
        antecedents_as_history: bool = False,
    ) -> Case:
        """One patient row (column name -> cell) as a case; raises :class:`RowError` (or
        pydantic's ``ValidationError``) for a row that cannot be used. With
        ``antecedents_as_history`` the antecedents become ``history.prior_conditions``."""
        return self._decode_row(row, case_id, source, antecedents_as_history)[0]

    def _decode_row(
        self, row: Mapping[str, str], case_id: str, source: str, antecedents_as_history: bool
    ) -> tuple[Case, list[str]]:
        age = _parse_age(row["AGE"])
        sex = _SEX.get(row["SEX"].strip().upper())
        if sex is None:
            raise RowError("invalid SEX", "column SEX: expected M or F")
        pathology = self.condition(row["PATHOLOGY"])
        if pathology is None:
            raise RowError("unknown pathology", "column PATHOLOGY: not in release_conditions.json")
        differential = []
        for i, (name, probability) in enumerate(
            _parse_differential(row["DIFFERENTIAL_DIAGNOSIS"]), start=1
        ):
            cond = self.condition(name)
            if cond is None:
                raise RowError(
                    "unknown differential diagnosis",
                    f"DIFFERENTIAL_DIAGNOSIS entry {i}: not in release_conditions.json",
                )
            differential.append(
                DifferentialEntry(name=cond.name, probability=probability, icd10=cond.icd10)
            )
        evidences = _parse_evidences(row["EVIDENCES"])
        decoded = self._decode_evidences(evidences, row["INITIAL_EVIDENCE"])
        history = History()
        if antecedents_as_history:
            # The chief complaint stays a finding even in the rare row where it is an antecedent.
            first = decoded[0][0].code if row["INITIAL_EVIDENCE"].strip() else None
            moved = [f for ev, f in decoded if ev.is_antecedent and ev.code != first]
            history = History(prior_conditions=tuple(_history_phrase(f) for f in moved))
            decoded = [(ev, f) for ev, f in decoded if not ev.is_antecedent or ev.code == first]
        findings = tuple(f for _, f in decoded)
        case = Case(
            case_id=case_id,
            age=age,
            sex=sex,
            findings=findings,
            history=history,
            source=source,
            label=Label(
                diagnosis=pathology.name,
                icd10=pathology.icd10,
                differential=tuple(differential),
            ),
        )
        return case, evidences


# --- public entry points -------------------------------------------------------------------


def load_ddxplus(
    path: Path,
    report: LoadReport | None = None,
    *,
    stats: DDXPlusStats | None = None,
    antecedents_as_history: bool = False,
) -> Iterator[Case]:
    """Stream the cases of the English DDXPlus release at ``path``.

    Raises :class:`DataError` at once for a missing path, a missing or invalid JSON file, or a
    v0 (French) release; while streaming, for a patient file that cannot be read. Rows that
    cannot be used are skipped and counted in ``report``; ``stats`` (optional) receives what
    was decoded. ``antecedents_as_history`` moves the antecedent evidences from the findings
    into ``history.prior_conditions`` (see the module docstring).
    """
    return _load(path, report, stats, SOURCE, "en", antecedents_as_history)


def load_ddxplus_v0(
    path: Path, report: LoadReport | None = None, *, stats: DDXPlusStats | None = None
) -> Iterator[Case]:
    """Stream the cases of the original French DDXPlus release (v0) at ``path``, with English
    finding names and labels (see :func:`load_ddxplus` for the contract)."""
    return _load(path, report, stats, SOURCE_V0, "v0")


def ddxplus_candidates(path: Path) -> list[str]:
    """The English pathology names of the release at ``path``, in release order (both
    releases give the same 49 names)."""
    conditions, _ = _read_conditions(_json_dir(path))
    return [c.name for c in conditions]


def ddxplus_icd10(path: Path) -> dict[str, str]:
    """English pathology name -> ICD-10 id, normalised by :func:`feddx.data.icd10.normalize_icd10`
    ("g44.009" -> "G44.009"; pneumonia's "j17, j18" -> "J17,J18", scored on the levels both
    codes share)."""
    conditions, _ = _read_conditions(_json_dir(path))
    return {c.name: c.icd10 for c in conditions if c.icd10}


def patient_files(path: Path) -> list[PatientFile]:
    """The patient files a PATH denotes (see the module docstring); raises :class:`DataError`
    if there are none or a zip cannot be read."""
    if not path.exists():
        raise DataError(f"DDXPlus path not found: {path}")
    if path.is_dir():
        files: list[PatientFile] = []
        for p in sorted(path.iterdir()):
            if not p.is_file() or p.name.startswith("."):
                continue
            suffix = p.suffix.lower()
            if suffix == ".csv" or (suffix == "" and p.name.endswith("_patients")):
                files.append(PatientFile(p))
            elif suffix == ".zip" and p.stem not in (CONDITIONS, EVIDENCES):
                files.extend(_zip_members(p))
        if not files:
            raise DataError(f"no DDXPlus patient files (*.csv, *_patients.zip) in {path}")
        return files
    if path.suffix.lower() == ".zip":
        return _zip_members(path)
    if path.suffix.lower() == ".json":
        raise DataError(
            f"{path} is a JSON file: give the release directory or a patient CSV/zip instead"
        )
    return [PatientFile(path)]


# --- loading -------------------------------------------------------------------------------


def _load(
    path: Path,
    report: LoadReport | None,
    stats: DDXPlusStats | None,
    source: str,
    expected: Release,
    antecedents_as_history: bool = False,
) -> Iterator[Case]:
    # Resolve and read everything that can fail as a whole before the first row, so a wrong
    # PATH is one clear error at call time rather than at the first iteration.
    files = patient_files(path)
    release = DDXPlusRelease.from_path(path)
    if release.release != expected:
        other = SOURCE_V0 if expected == "en" else SOURCE
        raise DataError(
            f"{source}: {_json_dir(path)} holds the "
            f"{'French v0' if release.release == 'v0' else 'English'} release of DDXPlus "
            f"(evidence codes like {next(iter(release.evidences))!r}); use the source {other!r}"
        )
    return _stream(
        files,
        release,
        report if report is not None else LoadReport(source),
        stats if stats is not None else DDXPlusStats(),
        source,
        antecedents_as_history,
    )


def _stream(
    files: Sequence[PatientFile],
    release: DDXPlusRelease,
    report: LoadReport,
    stats: DDXPlusStats,
    source: str,
    antecedents_as_history: bool = False,
) -> Iterator[Case]:
    for pf in files:
        with _open_lines(pf) as lines:
            allow_long_fields()
            reader = csv.reader(lines)
            header = _next_row(reader, pf)
            if header is None:
                raise DataError(f"{pf.display}: empty file, expected a DDXPlus header")
            index = {name.strip(): i for i, name in enumerate(header)}
            missing = [c for c in COLUMNS if c not in index]
            if missing:
                raise DataError(
                    f"{pf.display}: not a DDXPlus patient file, missing column(s) "
                    + ", ".join(missing)
                )
            while True:
                try:
                    row = _next_row(reader, pf)
                except csv.Error as e:
                    stats.rows += 1
                    report.skip(pf.display, reader.line_num, "malformed CSV row", str(e)[:200])
                    continue
                if row is None:
                    break
                if not row:  # blank line
                    continue
                stats.rows += 1
                line = reader.line_num
                if len(row) != len(header):
                    report.skip(
                        pf.display,
                        line,
                        "wrong number of columns",
                        f"{len(row)} fields, header has {len(header)}",
                    )
                    continue
                fields = {c: row[index[c]] for c in COLUMNS}
                try:
                    case, evidences = release._decode_row(
                        fields, f"{pf.stem}:{line}", source, antecedents_as_history
                    )
                except RowError as e:
                    report.skip(pf.display, line, e.reason, e.detail)
                    continue
                except ValidationError as e:
                    report.skip(pf.display, line, "invalid case", describe_error(e))
                    continue
                report.n_cases += 1
                stats.evidences += len(evidences)
                stats.findings += len(case.findings)
                stats.codes.update(e.partition(VALUE_SEPARATOR)[0] for e in evidences)
                if fields["INITIAL_EVIDENCE"].strip():
                    stats.codes.add(fields["INITIAL_EVIDENCE"].strip())
                stats.cases_per_file[pf.display] += 1
                yield case


def _next_row(reader: Any, pf: PatientFile) -> list[str] | None:
    """The next CSV record, None at the end; I/O failures become DataError."""
    try:
        row: list[str] = next(reader)
    except StopIteration:
        return None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {pf.display}: {e}") from e
    return row


@contextlib.contextmanager
def _open_lines(pf: PatientFile) -> Iterator[Iterator[str]]:
    """The file's lines, decoded one at a time so that a bad byte is reported at its own line
    (a text wrapper decodes 8 KB ahead and would blame whichever row was being parsed)."""
    try:
        with contextlib.ExitStack() as stack:
            if pf.member is None:
                binary: IO[bytes] = stack.enter_context(pf.path.open("rb"))
            else:
                archive = stack.enter_context(zipfile.ZipFile(pf.path))
                binary = stack.enter_context(archive.open(pf.member))
            yield _decoded_lines(binary, pf)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {pf.display}: {getattr(e, 'strerror', None) or e}") from e


def _decoded_lines(binary: IO[bytes], pf: PatientFile) -> Iterator[str]:
    for number, raw in enumerate(binary, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{pf.display}: line {number} is not UTF-8 text ({e.reason})") from e
        yield line.removeprefix("\ufeff") if number == 1 else line


def _zip_members(path: Path) -> list[PatientFile]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [
                i.filename
                for i in archive.infolist()
                if not i.is_dir()
                and not i.filename.startswith("__MACOSX/")
                and not Path(i.filename).name.startswith(".")
                and Path(i.filename).suffix.lower() in ("", ".csv")
            ]
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read zip archive {path}: {e}") from e
    if not names:
        raise DataError(f"{path}: no patient CSV inside the zip archive")
    return [PatientFile(path, name) for name in sorted(names)]


# --- the release JSON files ----------------------------------------------------------------


def _json_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"DDXPlus path not found: {path}")
    return path if path.is_dir() else path.parent


def _read_release_json(directory: Path, stem: str) -> tuple[dict[str, Any], str]:
    """The parsed ``<stem>.json`` (plain or inside ``<stem>.zip``) and how to name it."""
    plain, zipped = directory / f"{stem}.json", directory / f"{stem}.zip"
    try:
        if plain.is_file():
            where = str(plain)
            text = plain.read_text(encoding="utf-8-sig")
        elif zipped.is_file():
            with zipfile.ZipFile(zipped) as archive:
                members = [n for n in archive.namelist() if Path(n).name in (stem, f"{stem}.json")]
                if not members:
                    raise DataError(f"{zipped}: no {stem}.json inside the zip archive")
                where = f"{zipped}/{members[0]}"
                text = archive.read(members[0]).decode("utf-8-sig")
        else:
            raise DataError(f"missing {stem}.json (or {stem}.zip) in {directory}")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {stem} in {directory}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON at line {e.lineno} column {e.colno}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{where}: expected an object of objects keyed by name")
    return data, where


def _read_conditions(directory: Path) -> tuple[list[Condition], dict[str, Condition]]:
    data, where = _read_release_json(directory, CONDITIONS)
    conditions: list[Condition] = []
    aliases: dict[str, Condition] = {}
    for key, entry in data.items():
        name = entry.get("cond-name-eng")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: condition {key!r} has no English name 'cond-name-eng'")
        icd = entry.get("icd10-id")
        try:
            code = normalize_icd10(icd) if isinstance(icd, str) and icd.strip() else None
        except ValueError as e:
            raise DataError(f"{where}: condition {key!r}: 'icd10-id' {e}") from e
        # The release codes SLE as M34 (systemic sclerosis); lupus is M32. Correct the one known
        # error so hierarchical ICD-10 metrics do not score lupus as scleroderma.
        if name.strip() == "SLE" and code == "M34":
            code = "M32"
        cond = Condition(name.strip(), code)
        conditions.append(cond)
        for alias in (key, entry.get("condition_name"), entry.get("cond-name-fr"), name):
            if not isinstance(alias, str) or not alias.strip():
                continue
            known = aliases.setdefault(alias.strip(), cond)
            if known.name != cond.name:
                raise DataError(
                    f"{where}: the name {alias!r} denotes both {known.name!r} and {cond.name!r}"
                )
    if not conditions:
        raise DataError(f"{where}: no conditions")
    return conditions, aliases


def _read_evidences(directory: Path) -> dict[str, Evidence]:
    data, where = _read_release_json(directory, EVIDENCES)
    evidences: dict[str, Evidence] = {}
    for position, (code, entry) in enumerate(data.items()):
        question = entry.get("question_en")
        data_type = entry.get("data_type")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: evidence {code!r} has no English question 'question_en'")
        if data_type not in ("B", "C", "M"):
            raise DataError(f"{where}: evidence {code!r} has data_type {data_type!r}, not B/C/M")
        evidences[code] = Evidence(
            code=code,
            name=finding_name(question),
            data_type=data_type,
            is_antecedent=bool(entry.get("is_antecedent", False)),
            position=position,
            group=str(entry.get("code_question") or code),
            group_position=position,  # set below, once every position is known
            values={} if data_type == "B" else _value_meanings(entry, code, where),
        )
    if not evidences:
        raise DataError(f"{where}: no evidences")
    # A group whose head question is not in the file (E_69 "diabetes" names E_68) is its own.
    return {
        code: replace(
            ev,
            group=ev.group if ev.group in evidences else code,
            group_position=evidences[ev.group].position if ev.group in evidences else ev.position,
        )
        for code, ev in evidences.items()
    }


def _value_meanings(entry: Mapping[str, Any], code: str, where: str) -> dict[str, str | int]:
    meanings = entry.get("value_meaning") or {}
    if not isinstance(meanings, dict):
        raise DataError(f"{where}: evidence {code!r}: 'value_meaning' is not an object")
    if meanings:
        out: dict[str, str | int] = {}
        for value, meaning in meanings.items():
            english = meaning.get("en") if isinstance(meaning, dict) else None
            if not isinstance(english, str) or not english.strip():
                raise DataError(
                    f"{where}: evidence {code!r} value {value!r} has no English meaning"
                )
            out[str(value)] = VALUE_FIXES.get(english.strip(), english.strip())
        return out
    # No meanings: a numeric scale (0-10), or plain values that speak for themselves.
    possible = entry.get("possible-values") or []
    if not isinstance(possible, list) or not possible:
        raise DataError(f"{where}: evidence {code!r} has neither value meanings nor values")
    return {
        str(v): v if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in possible
    }


# --- cell parsing --------------------------------------------------------------------------

_STR = r"'[^'\\]*'"
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = rf"\[\s*{_STR}\s*,\s*{_NUM}\s*\]"
_STR_LIST = re.compile(rf"\[\s*(?:{_STR}(?:\s*,\s*{_STR})*\s*,?)?\s*\]")
_PAIR_LIST = re.compile(rf"\[\s*(?:{_PAIR}(?:\s*,\s*{_PAIR})*\s*,?)?\s*\]")
_STR_ITEM = re.compile(r"'([^'\\]*)'")
_PAIR_ITEM = re.compile(rf"\[\s*'([^'\\]*)'\s*,\s*({_NUM})\s*\]")


def _literal(raw: str) -> Any:
    """``ast.literal_eval`` for the cells the fast patterns do not match (double quotes,
    escapes); None if it is not a Python literal."""
    if len(raw) > _MAX_CELL:
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _parse_evidences(raw: str) -> list[str]:
    raw = raw.strip()
    if _STR_LIST.fullmatch(raw):
        return _STR_ITEM.findall(raw)
    value = _literal(raw)
    if isinstance(value, list | tuple) and all(isinstance(x, str) for x in value):
        return list(value)
    raise RowError("invalid EVIDENCES", "column EVIDENCES: not a list of evidence codes")


def _parse_differential(raw: str) -> list[tuple[str, float]]:
    raw = raw.strip()
    if not raw:
        return []
    pairs: list[tuple[str, Any]]
    if _PAIR_LIST.fullmatch(raw):
        pairs = [(name, float(p)) for name, p in _PAIR_ITEM.findall(raw)]
    else:
        value = _literal(raw)
        if not isinstance(value, list | tuple) or not all(
            isinstance(x, list | tuple) and len(x) == 2 and isinstance(x[0], str) for x in value
        ):
            raise RowError(
                "invalid DIFFERENTIAL_DIAGNOSIS",
                "column DIFFERENTIAL_DIAGNOSIS: not a list of [name, probability] pairs",
            )
        pairs = [(x[0], x[1]) for x in value]
    out: list[tuple[str, float]] = []
    for i, (name, p) in enumerate(pairs, start=1):
        if isinstance(p, bool) or not isinstance(p, int | float) or math.isnan(p):
            raise RowError(
                "invalid DIFFERENTIAL_DIAGNOSIS",
                f"DIFFERENTIAL_DIAGNOSIS entry {i}: probability is not a number",
            )
        if not -1e-9 <= p <= 1 + 1e-9:
            raise RowError(
                "invalid DIFFERENTIAL_DIAGNOSIS",
                f"DIFFERENTIAL_DIAGNOSIS entry {i}: probability outside 0-1",
            )
        out.append((name, min(1.0, max(0.0, float(p)))))
    return out


def _parse_age(raw: str) -> float:
    try:
        age = float(raw.strip())
    except ValueError:
        raise RowError("invalid AGE", "column AGE: not a number") from None
    if not 0 <= age <= 130:  # also false for NaN
        raise RowError("invalid AGE", "column AGE: outside 0-130")
    return age


def _history_phrase(f: Finding) -> str:
    """An antecedent as a prior-condition phrase: "smokes cigarettes", "no travel abroad"."""
    if f.negated:
        return f"no {f.name}"
    return f.name if f.value is None else f"{f.name}: {f.value}"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


register_source(SOURCE, load_ddxplus)
register_source(SOURCE_V0, load_ddxplus_v0)
register_source(
    SOURCE_HISTORY, lambda path, report: load_ddxplus(path, report, antecedents_as_history=True)
)
