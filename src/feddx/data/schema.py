"""The one patient-case schema.

Every loader converts its raw format into :class:`Case` at the edge; training, scoring,
evaluation, federation and the API only ever see this type. Fields are optional where real
sources lack them (a free-text CSV has no findings, UCI Heart has no text), so the schema
describes what a case *can* carry, and the prompt renderer uses whatever is present.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Sex = Literal["female", "male", "other", "unknown"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Finding(_Frozen):
    """One observation about the patient: a symptom, sign, measurement or answer.

    ``value`` is ``None`` for a plain present/absent finding; ``negated`` records an explicit
    "no" (e.g. "no chest pain"), which is clinically different from "not asked".
    """

    name: str = Field(min_length=1)
    value: str | float | int | bool | None = None
    unit: str | None = None
    negated: bool = False


class Encounter(_Frozen):
    """An earlier (or the current) visit, as it appears in the patient's history."""

    date: dt.date | None = None
    kind: str | None = None
    reason: str | None = None
    diagnoses: tuple[str, ...] = ()
    institution: str | None = None


class History(_Frozen):
    """What was known about the patient before this case.

    ``encounters`` are in chronological order (oldest first); loaders that know dates set them.
    """

    prior_conditions: tuple[str, ...] = ()
    medications: tuple[str, ...] = ()
    encounters: tuple[Encounter, ...] = ()
    allergies: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.prior_conditions or self.medications or self.encounters or self.allergies)


class DifferentialEntry(_Frozen):
    """One diagnosis of a ranked differential, with its probability."""

    name: str = Field(min_length=1)
    probability: float = Field(ge=0.0, le=1.0)
    icd10: str | None = None


class Label(_Frozen):
    """The reference answer: a diagnosis, its ICD-10 code and optionally a differential."""

    diagnosis: str = Field(min_length=1)
    icd10: str | None = None
    differential: tuple[DifferentialEntry, ...] = ()

    @field_validator("differential")
    @classmethod
    def _ranked(cls, v: tuple[DifferentialEntry, ...]) -> tuple[DifferentialEntry, ...]:
        # Downstream metrics (GTPA@1, DDR) assume descending order; sort once here.
        return tuple(sorted(v, key=lambda e: -e.probability))


class Case(_Frozen):
    """A patient case: who, what was found, what came before, where, and (if known) the answer."""

    case_id: str = Field(min_length=1)
    patient_id: str | None = None
    age: float | None = Field(default=None, ge=0, le=130)
    sex: Sex | None = None
    text: str | None = None
    findings: tuple[Finding, ...] = ()
    history: History = History()
    date: dt.date | None = None
    region: str | None = None
    institution: str | None = None
    source: str | None = None
    # The language the case is written in (a BCP 47 tag such as "pt-BR"); it picks the words of
    # the prompt (feddx.model.prompt). None: English, what every adapter so far was trained on.
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    label: Label | None = None

    def require_label(self) -> Label:
        """The label, or a :class:`ValueError` naming the case (for training/evaluation)."""
        if self.label is None:
            raise ValueError(f"case {self.case_id!r} has no label")
        return self.label


def age_band(age: float | None) -> str:
    """A coarse age band for per-group reporting ("unknown" when missing)."""
    if age is None:
        return "unknown"
    for upper, name in ((18, "0-17"), (40, "18-39"), (60, "40-59"), (75, "60-74")):
        if age < upper:
            return name
    return "75+"
