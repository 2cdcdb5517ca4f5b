"""What a loader skipped and why.

Loaders never drop a record silently: each skip is counted under a short reason and kept as a
:class:`SkippedRecord` naming the file and line (or resource id). Messages never quote patient
text, only field names and positions, so a report can be logged and shared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SkippedRecord:
    """One record a loader could not use."""

    file: str
    line: int | None
    reason: str  # short and stable, used as the counting key
    detail: str = ""  # field names, codes, positions; never raw text

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class LoadReport:
    """Counts of what a load produced and skipped."""

    source: str
    n_cases: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)

    def skip(self, file: str, line: int | None, reason: str, detail: str = "") -> None:
        self.skipped.append(SkippedRecord(file, line, reason, detail))

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def skipped_reasons(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())


def describe_error(err: Exception) -> str:
    """A one-line description of a parsing/validation error that never echoes input values.

    pydantic's default message quotes the offending input, which may be patient text; this
    keeps only the field path and the rule that failed.
    """
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        parts = [
            f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}"
            for e in err.errors(include_input=False, include_url=False)
        ]
        return "; ".join(parts)[:300]
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    return (str(err).splitlines() or [type(err).__name__])[0][:300]
