"""JSONL of the case schema: one :class:`~feddx.data.schema.Case` object per line.

This is also the format ``feddx data prepare`` writes, so prepared (de-identified) data
round-trips through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from feddx.data.report import LoadReport, describe_error
from feddx.data.schema import Case
from feddx.errors import DataError
from feddx.io import atomic_open

SOURCE = "jsonl"


def load_jsonl(path: Path, report: LoadReport | None = None) -> Iterator[Case]:
    """Yield the cases of a JSONL file (or of every ``*.jsonl`` in a directory)."""
    report = report if report is not None else LoadReport(SOURCE)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no .jsonl files in {path}")
    for file in files:
        try:
            f = file.open(encoding="utf-8")
        except OSError as e:
            raise DataError(f"cannot read {file}: {e.strerror}") from e
        with f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    case = Case.model_validate(json.loads(line))
                except json.JSONDecodeError as e:
                    report.skip(file.name, line_no, "invalid JSON", f"column {e.colno}: {e.msg}")
                    continue
                except ValidationError as e:
                    report.skip(file.name, line_no, "invalid case", describe_error(e))
                    continue
                report.n_cases += 1
                yield case


def write_jsonl(cases: Iterable[Case], path: Path) -> int:
    """Write cases atomically (temp file, then rename); returns how many were written."""
    n = 0
    # A loader that fails part-way leaves neither a partial file nor a stray temp file.
    with atomic_open(path) as f:
        for case in cases:
            f.write(case.model_dump_json(exclude_defaults=True) + "\n")
            n += 1
    return n
