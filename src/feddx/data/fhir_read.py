"""Reading FHIR R4 files: Bundle/resource JSON and bulk-export NDJSON, validated per resource.

This module knows about files, lines and validation, nothing about cases. It yields each
resource that passed validation together with where it came from, and reports everything else
(bad JSON, a wrong or unknown ``resourceType``, a validation error) into the
:class:`~feddx.data.report.LoadReport` with file, line and reason, then carries on.

Validation uses ``fhir.resources`` 8.3. That release ships FHIR R5 as its default package and
R4B and STU3 as sub-packages; there is no R4 package. R4B is the FHIR-R4 technical correction
release: the resources read here (Patient, Encounter, Condition, Observation,
MedicationRequest, Medication, Procedure, DocumentReference, DiagnosticReport, Organization,
Location) have the same structure in R4 and R4B (R5 does not: e.g. ``Encounter.class`` became
a list), so R4 data is validated against ``fhir.resources.R4B``.

NDJSON is streamed line by line. Each NDJSON line's byte offset is kept, so a large clinical
note can be re-read later from disk instead of being held in memory. A Bundle file is parsed
whole (Bundles are usually one patient each); each entry's line number is recovered so errors
point at the entry.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feddx.data.report import LoadReport, describe_error
from feddx.errors import DataError

# The resource types the case builder uses. Other valid types (Claim, Immunization, ...) are
# counted as ignored and not validated: validation is the slow part of reading.
USED_TYPES = frozenset(
    {
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "MedicationRequest",
        "Medication",
        "Procedure",
        "DocumentReference",
        "DiagnosticReport",
        "Organization",
        "Location",
    }
)
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
JSON_SUFFIXES = (".json",)

_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Position:
    """Where a resource was read: for reports, and to re-read a note from disk.

    ``offset`` is the byte offset of an NDJSON line (``None`` inside a Bundle file, whose
    entries are only addressable in the parsed document).
    """

    path: Path
    line: int | None
    offset: int | None = None

    @property
    def file(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ReadResource:
    """A validated resource (a ``fhir.resources.R4B`` model) and where it was read."""

    model: Any
    where: Position
    full_url: str | None = None


def fhir_files(path: Path) -> list[Path]:
    """The FHIR files at ``path``: the file itself, or a directory's ``*.json`` and ``*.ndjson``.

    Raises :class:`DataError` when there is nothing to read.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"fhir: path not found: {path}")
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name.endswith(NDJSON_SUFFIXES + JSON_SUFFIXES)
    )
    if not files:
        raise DataError(f"fhir: no .json or .ndjson files in {path}")
    return files


def read_resources(
    path: Path,
    report: LoadReport,
    *,
    types: frozenset[str] = USED_TYPES,
    ignored: Counter[str] | None = None,
) -> Iterator[ReadResource]:
    """Yield every valid resource of ``types`` under ``path``, in file order.

    Invalid records are reported (reasons ``invalid JSON``, ``wrong resourceType``,
    ``invalid resource``) and skipped. Valid resources of other types are counted in
    ``ignored`` (by type) and skipped; so is a whole NDJSON file whose name says it holds an
    unused type (``Claim.000.ndjson``), without reading it. Raises :class:`DataError` if a
    file cannot be opened.
    """
    ignored = ignored if ignored is not None else Counter()
    reader = _Reader(report, types, ignored)
    for file in fhir_files(path):
        file_type = _file_resource_type(file)
        if file_type is not None and file_type not in types:
            ignored[file_type] += _count_lines(file)
            continue
        if file.name.endswith(NDJSON_SUFFIXES):
            yield from reader.ndjson(file, file_type)
        else:
            yield from reader.json_document(file)


def _file_resource_type(file: Path) -> str | None:
    """The resource type a bulk-export file name declares (``Patient.000.ndjson``), if any."""
    if not file.name.endswith(NDJSON_SUFFIXES):
        return None
    head = file.name.split(".", 1)[0]
    return head if _is_resource_type(head) else None


@functools.lru_cache(maxsize=256)
def _is_resource_type(name: str) -> bool:
    """Whether ``name`` is a concrete FHIR R4B resource type (not a datatype, not abstract)."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    if not name[:1].isupper() or not name.isalpha() or name in {"Resource", "DomainResource"}:
        return False
    try:
        cls = get_fhir_model_class(name)
    except (ValueError, KeyError, ImportError):
        return False
    return isinstance(cls, type) and issubclass(cls, Resource)


def _count_lines(file: Path) -> int:
    try:
        with file.open("rb") as f:
            return sum(1 for raw in f if raw.strip())
    except OSError as e:
        raise DataError(f"cannot read {file}: {e.strerror}") from e


class _Reader:
    def __init__(self, report: LoadReport, types: frozenset[str], ignored: Counter[str]) -> None:
        self.report = report
        self.types = types
        self.ignored = ignored

    def ndjson(self, file: Path, file_type: str | None) -> Iterator[ReadResource]:
        try:
            f = file.open("rb")
        except OSError as e:
            raise DataError(f"cannot read {file}: {e.strerror}") from e
        with f:
            offset = 0
            for line_no, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                where = Position(file, line_no, start)
                try:
                    obj = json.loads(raw.strip())
                except json.JSONDecodeError as e:
                    self.report.skip(
                        file.name, line_no, "invalid JSON", f"column {e.colno}: {e.msg}"
                    )
                    continue
                except UnicodeDecodeError as e:
                    self.report.skip(
                        file.name, line_no, "invalid JSON", f"not UTF-8 at byte {e.start}"
                    )
                    continue
                yield from self._resource(obj, where, None, expected_type=file_type)

    def json_document(self, file: Path) -> Iterator[ReadResource]:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise DataError(f"cannot read {file}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            self.report.skip(file.name, None, "invalid JSON", f"not UTF-8 at byte {e.start}")
            return
        try:
            top, entries = _parse_document(text)
        except json.JSONDecodeError as e:
            self.report.skip(file.name, e.lineno, "invalid JSON", f"column {e.colno}: {e.msg}")
            return
        if entries is None:
            yield from self._resource(top, Position(file, 1), None)
            return
        if not isinstance(top, dict) or top.get("resourceType") != "Bundle":
            self.report.skip(
                file.name, 1, "wrong resourceType", "a top-level 'entry' outside a Bundle"
            )
            return
        for line, entry in entries:
            yield from self._entry(entry, Position(file, line))

    def _entry(self, entry: Any, where: Position) -> Iterator[ReadResource]:
        if not isinstance(entry, dict):
            self.report.skip(
                where.file, where.line, "invalid resource", "Bundle.entry: not an object"
            )
            return
        if "resource" not in entry:
            # e.g. a DELETE in a transaction Bundle: nothing to load, nothing invalid.
            self.ignored["Bundle.entry without resource"] += 1
            return
        full_url = entry.get("fullUrl")
        yield from self._resource(
            entry["resource"], where, full_url if isinstance(full_url, str) else None
        )

    def _resource(
        self, obj: Any, where: Position, full_url: str | None, *, expected_type: str | None = None
    ) -> Iterator[ReadResource]:
        if not isinstance(obj, dict):
            self.report.skip(where.file, where.line, "wrong resourceType", "not a JSON object")
            return
        rtype = obj.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            self.report.skip(where.file, where.line, "wrong resourceType", "missing resourceType")
            return
        if rtype == "Bundle":
            entries = obj.get("entry") or []
            if not isinstance(entries, list):
                self.report.skip(
                    where.file, where.line, "invalid resource", "Bundle.entry: not a list"
                )
                return
            for entry in entries:
                yield from self._entry(entry, where)
            return
        if not _is_resource_type(rtype):
            detail = f"unknown resourceType {rtype[:40]!r}"
            self.report.skip(where.file, where.line, "wrong resourceType", detail)
            return
        if expected_type is not None and rtype != expected_type:
            detail = f"{rtype} in a {expected_type} file"
            self.report.skip(where.file, where.line, "wrong resourceType", detail)
            return
        if rtype not in self.types:
            self.ignored[rtype] += 1
            return
        from fhir.resources.R4B import get_fhir_model_class

        try:
            model = get_fhir_model_class(rtype).model_validate(obj)
        except ValidationError as e:
            self.report.skip(
                where.file, where.line, "invalid resource", f"{rtype}: {describe_error(e)}"
            )
            return
        except (ValueError, TypeError) as e:
            self.report.skip(
                where.file, where.line, "invalid resource", f"{rtype}: {describe_error(e)}"
            )
            return
        if not model.id:
            self.report.skip(where.file, where.line, "invalid resource", f"{rtype}: missing id")
            return
        yield ReadResource(model, where, full_url)


def _parse_document(text: str) -> tuple[Any, list[tuple[int, Any]] | None]:
    """Parse a JSON document; for a top-level object with an ``entry`` array also return each
    entry with the line it starts on.

    The top-level object is walked by hand with :meth:`json.JSONDecoder.raw_decode` so every
    value is parsed exactly once and entry positions are known. Errors are
    :class:`json.JSONDecodeError` with the position in the whole document.
    """
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        value, end = dec.raw_decode(text, i)
        _expect_end(text, end)
        return value, None
    obj: dict[str, Any] = {}
    entries: list[tuple[int, Any]] | None = None
    line, counted = 1, 0  # line number of position `counted`, advanced incrementally
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        _expect_end(text, i + 1)
        return obj, None
    while True:
        if text[i : i + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        key, i = dec.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
        i = _skip_ws(text, i + 1)
        if key == "entry" and text[i : i + 1] == "[":
            entries = []
            i = _skip_ws(text, i + 1)
            if text[i : i + 1] == "]":
                i += 1
            else:
                while True:
                    line += text.count("\n", counted, i)
                    counted = i
                    value, i = dec.raw_decode(text, i)
                    entries.append((line, value))
                    i = _skip_ws(text, i)
                    if text[i : i + 1] == ",":
                        i = _skip_ws(text, i + 1)
                        continue
                    if text[i : i + 1] != "]":
                        raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
                    i += 1
                    break
            obj[key] = [v for _, v in entries]
        else:
            obj[key], i = dec.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i : i + 1] != "}":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        _expect_end(text, i + 1)
        return obj, entries


def _skip_ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def _expect_end(text: str, i: int) -> None:
    i = _skip_ws(text, i)
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
