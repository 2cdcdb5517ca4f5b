"""Free-text CSV: one case per row, a diagnosis label and a description (e.g. Symptom2Disease).

The header names the columns, case-insensitively: a label column (``label``, ``diagnosis`` or
``disease``) and a text column (``text``, ``symptoms`` or ``description``) are required. Optional
columns are used when present, so an export from a hospital system can carry more than the
text: ``id``/``case_id``, ``patient_id``, ``age``, ``sex``, ``region``, ``institution``,
``icd10`` (an explicit code wins over the curated name lookup) and ``language`` (a BCP 47 tag
such as ``pt-BR``: the prompt's language). Other columns are ignored.

Labels are normalised with :func:`feddx.data.icd10.normalize_label` (one spelling per
case-insensitive name) and coded with :func:`feddx.data.icd10.lookup_icd10`. A row that cannot
become a case (wrong number of columns, empty label, missing text, bad value) is skipped into the
:class:`LoadReport` with file, line and reason; the rest of the file still loads. Rows are
streamed, so a file of any size loads in constant memory (apart from the set of case ids kept to
reject duplicates).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from feddx.data.csvio import allow_long_fields
from feddx.data.icd10 import lookup_icd10, normalize_icd10, normalize_label
from feddx.data.report import LoadReport, describe_error
from feddx.data.schema import Case, Label, Sex
from feddx.data.sources import register_source
from feddx.errors import DataError

SOURCE = "csv"

LABEL_COLUMNS = ("label", "diagnosis", "disease")
TEXT_COLUMNS = ("text", "symptoms", "description")
# optional field -> accepted header names
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "case_id": ("case_id", "id"),
    "patient_id": ("patient_id",),
    "age": ("age",),
    "sex": ("sex", "gender"),
    "region": ("region",),
    "institution": ("institution", "hospital"),
    "icd10": ("icd10", "icd10_code", "icd_10"),
    "language": ("language", "lang"),
}
_SEX: dict[str, Sex] = {
    "f": "female",
    "female": "female",
    "woman": "female",
    "m": "male",
    "male": "male",
    "man": "male",
    "other": "other",
    "unknown": "unknown",
    "u": "unknown",
}


class _RowError(ValueError):
    """A row that cannot become a case: ``reason`` is the counting key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


def _describe_header(header: list[str]) -> str:
    # A headerless file's first row is patient data: show short names only, never long text.
    shown = [repr(h.strip()) if len(h.strip()) <= 40 else f"<{len(h)} chars>" for h in header]
    return ", ".join(shown[:12]) + (f", ... ({len(header)} columns)" if len(header) > 12 else "")


def _find_column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _columns(file: Path, header: list[str]) -> tuple[int, int, dict[str, int]]:
    label_col = _find_column(header, LABEL_COLUMNS)
    text_col = _find_column(header, TEXT_COLUMNS)
    missing = [
        f"no {kind} column (one of {', '.join(names)})"
        for kind, names, col in (
            ("label", LABEL_COLUMNS, label_col),
            ("text", TEXT_COLUMNS, text_col),
        )
        if col is None
    ]
    if missing:
        found = _describe_header(header) or "an empty header"
        raise DataError(f"{file}: {' and '.join(missing)} in the header; found {found}")
    assert label_col is not None and text_col is not None
    optional = {
        field: col
        for field, names in OPTIONAL_COLUMNS.items()
        if (col := _find_column(header, names)) is not None
    }
    return label_col, text_col, optional


def _row_to_case(
    file: Path, line: int, row: list[str], label_col: int, text_col: int, optional: dict[str, int]
) -> Case:
    label = normalize_label(row[label_col])
    if not label:
        raise _RowError("empty label")
    text = row[text_col].strip()
    if not text:
        raise _RowError("missing text")
    values = {field: row[col].strip() for field, col in optional.items()}
    icd10 = None
    if values.get("icd10"):
        try:
            icd10 = normalize_icd10(values["icd10"])
        except ValueError as e:
            raise _RowError("invalid ICD-10 code", "column 'icd10'") from e
    sex: Sex | None = None
    if values.get("sex"):
        sex = _SEX.get(values["sex"].lower())
        if sex is None:
            raise _RowError("invalid value", "column 'sex': not one of female/male/other/unknown")
    age = None
    if values.get("age"):
        try:
            age = float(values["age"])
        except ValueError as e:
            raise _RowError("invalid value", "column 'age': not a number") from e
    try:
        return Case(
            case_id=values.get("case_id") or f"{file.stem}-{line}",
            patient_id=values.get("patient_id") or None,
            age=age,
            sex=sex,
            text=text,
            region=values.get("region") or None,
            institution=values.get("institution") or None,
            source=SOURCE,
            language=values.get("language") or None,
            label=Label(diagnosis=label, icd10=icd10 or lookup_icd10(label)),
        )
    except ValidationError as e:
        raise _RowError("invalid value", describe_error(e)) from e


def _load_file(file: Path, report: LoadReport, seen_ids: set[str]) -> Iterator[Case]:
    try:
        f = file.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read {file}: {e.strerror}") from e
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{file}: empty file (expected a header with label and text)")
            label_col, text_col, optional = _columns(file, header)
            while True:
                start = reader.line_num + 1  # a quoted field may span lines: report the first
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    report.skip(file.name, start, "malformed CSV", describe_error(e))
                    continue
                if not any(cell.strip() for cell in row):
                    continue  # a blank line is not a record
                if len(row) != len(header):
                    reason = "too many columns" if len(row) > len(header) else "too few columns"
                    report.skip(file.name, start, reason, f"expected {len(header)}, got {len(row)}")
                    continue
                try:
                    case = _row_to_case(file, start, row, label_col, text_col, optional)
                except _RowError as e:
                    report.skip(file.name, start, e.reason, e.detail)
                    continue
                if case.case_id in seen_ids:
                    report.skip(file.name, start, "duplicate case id", "column 'id'")
                    continue
                seen_ids.add(case.case_id)
                report.n_cases += 1
                yield case
        except UnicodeDecodeError as e:
            raise DataError(
                f"{file}: not UTF-8 text near line {reader.line_num + 1} (byte {e.start}); "
                "convert it, e.g. iconv -f cp1252 -t utf-8"
            ) from e


def load_text_csv(path: Path, report: LoadReport | None = None) -> Iterator[Case]:
    """Yield one case per row of a ``label,text`` CSV file, or of every ``*.csv`` in a directory
    (sorted by name).

    Raises :class:`DataError` when a file cannot be read, is not UTF-8, or has no label/text
    header; row-level problems are skipped into ``report``. Case ids come from an ``id`` column,
    else ``<file stem>-<line>``.
    """
    report = report if report is not None else LoadReport(SOURCE)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DataError(f"no .csv files in {path}")
    else:
        files = [path]
    allow_long_fields()
    seen_ids: set[str] = set()
    for file in files:
        yield from _load_file(file, report, seen_ids)


register_source(SOURCE, load_text_csv)
