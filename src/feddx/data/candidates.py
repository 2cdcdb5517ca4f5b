"""The candidate diagnoses a dataset is scored against, with their ICD-10 codes.

One function, so ``feddx train`` (candidate loss), ``feddx evaluate``, the Flower app and the
demo rank the same list and report the same codes:

1. ``candidates_file``: one name per line (``#`` comments and blank lines ignored);
2. otherwise the dataset's own label space where it has one (DDXPlus: its pathologies;
   UCI Heart: its 5 diagnoses);
3. otherwise the distinct labels of the given cases (callers pass the training split, so the
   list never depends on held-out labels).

Codes come from the cases' labels, the dataset's own table, and the curated name -> ICD-10
map for the names still without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from feddx.data.schema import Case
from feddx.errors import DataError


@dataclass(frozen=True)
class CandidateList:
    """Candidate names in scoring order and name -> ICD-10 code (where one is known)."""

    names: list[str]
    icd10: dict[str, str] = field(default_factory=dict)


def read_candidates_file(path: Path) -> list[str]:
    """The names listed in ``path``; :class:`DataError` if unreadable or empty."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read candidates file {path}: {e.strerror}") from e
    names = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
    if not names:
        raise DataError(f"candidates file {path} lists no candidates")
    return names


def candidate_list(
    source: str,
    path: Path | None,
    cases: Sequence[Case],
    candidates_file: Path | None = None,
) -> CandidateList:
    """The candidate list and ICD-10 map of a dataset (see the module docstring).

    Raises :class:`DataError` for an unreadable candidates file or fewer than 2 candidates.
    """
    icd10: dict[str, str] = {}
    for c in cases:
        if c.label and c.label.icd10:
            icd10.setdefault(c.label.diagnosis, c.label.icd10)
    if candidates_file is not None:
        names = read_candidates_file(candidates_file)
    elif source in ("ddxplus", "ddxplus-v0", "ddxplus-history") and path is not None:
        from feddx.data.ddxplus import ddxplus_candidates, ddxplus_icd10

        names = ddxplus_candidates(path)
        icd10.update(ddxplus_icd10(path))
    elif source == "uci-heart":
        from feddx.data.uci_heart import DIAGNOSES, ICD10

        names = list(DIAGNOSES.values())
        icd10.update(ICD10)
    else:
        names = sorted({c.label.diagnosis for c in cases if c.label})
    if len(names) < 2:
        raise DataError(f"need at least 2 candidate diagnoses, found {len(names)}")
    from feddx.data.icd10 import lookup_icd10

    for name in names:
        if name not in icd10 and (code := lookup_icd10(name)):
            icd10[name] = code
    return CandidateList(list(names), icd10)
