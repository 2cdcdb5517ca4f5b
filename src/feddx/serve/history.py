"""Stored patient histories, per institution, keyed by pseudonymous patient id.

An institution stores a patient's history once (``PUT /v1/patients/{id}/history``) and later
diagnoses name the patient instead of resending it. The store is partitioned by the caller's
institution, which comes from its credentials: another institution's patient is not forbidden
but simply absent (404), so an id reveals nothing across institutions.

On disk: ``root/<sha256(institution)[:32]>/<sha256(institution, patient id)>.json``, each file
the :class:`~feddx.data.schema.History` as JSON, written atomically (:mod:`feddx.io`) with
mode 0600. Neither the institution's name nor the patient id appears in a path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from feddx.data.schema import Case, History
from feddx.errors import DataError
from feddx.io import atomic_write_text


class HistoryStore:
    """Patient histories under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, institution: str, patient_id: str) -> Path:
        inst = hashlib.sha256(institution.encode()).hexdigest()[:32]
        key = hashlib.sha256(f"{institution}\x00{patient_id}".encode()).hexdigest()
        return self.root / inst / f"{key}.json"

    def get(self, institution: str, patient_id: str) -> History | None:
        """The stored history, or ``None``. Raises :class:`DataError` (naming no patient) if
        the stored file is corrupt."""
        path = self._path(institution, patient_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return History.model_validate(json.loads(text))
        except (ValueError, ValidationError):
            raise DataError(f"stored history {path.name} is corrupt") from None

    def put(self, institution: str, patient_id: str, history: History) -> None:
        """Store (replace) the patient's history."""
        path = self._path(institution, patient_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_text(path, history.model_dump_json() + "\n")

    def delete(self, institution: str, patient_id: str) -> bool:
        """Remove the patient's history; ``False`` if none was stored."""
        path = self._path(institution, patient_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


def merge_history(case: Case, stored: History) -> Case:
    """``case`` with ``stored`` added to its own history: conditions and medications united
    (the case's first), encounters merged in date order without duplicates."""
    own = case.history
    encounters = list(dict.fromkeys(stored.encounters + own.encounters))
    dated = sorted((e for e in encounters if e.date), key=lambda e: e.date or dt.date.min)
    undated = [e for e in encounters if not e.date]
    merged = History(
        prior_conditions=tuple(dict.fromkeys(own.prior_conditions + stored.prior_conditions)),
        medications=tuple(dict.fromkeys(own.medications + stored.medications)),
        encounters=tuple(undated + dated),
    )
    return case.model_copy(update={"history": merged})
