"""Request and response bodies of the service (OpenAPI examples included).

The case is the one :class:`feddx.data.schema.Case`: the service speaks the same schema as
every loader, trainer and evaluator. Nothing in a response echoes patient text: a differential
is diagnosis names, codes and numbers; errors name fields, never values.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feddx.data.schema import Case

PATIENT_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
ADAPTER_ID_PATTERN = r"^[A-Za-z0-9._/\-]{1,200}$"

EXAMPLE_CASE: dict[str, Any] = {
    "case_id": "visit-0001",
    "age": 63,
    "sex": "male",
    "findings": [
        {"name": "chest pain", "value": "asymptomatic"},
        {"name": "resting BP", "value": 145, "unit": "mmHg"},
        {"name": "cholesterol", "value": 233, "unit": "mg/dl"},
        {"name": "exercise angina", "value": True},
        {"name": "ST depression", "value": 2.3, "unit": "mm"},
    ],
}

EXAMPLE_BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {
            "resource": {
                "resourceType": "Patient",
                "id": "p1",
                "gender": "female",
                "birthDate": "1961-04-02",
            }
        },
        {
            "resource": {
                "resourceType": "Encounter",
                "id": "e1",
                "status": "in-progress",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": "Patient/p1"},
                "period": {"start": "2026-11-30T09:00:00Z"},
            }
        },
        {
            "resource": {
                "resourceType": "Observation",
                "id": "o1",
                "status": "final",
                "code": {"text": "resting BP"},
                "subject": {"reference": "Patient/p1"},
                "encounter": {"reference": "Encounter/e1"},
                "valueQuantity": {"value": 150, "unit": "mmHg"},
            }
        },
    ],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiagnoseRequest(_Strict):
    """One case to diagnose: a :class:`Case`, or a FHIR R4 Bundle of one patient."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"case": EXAMPLE_CASE, "top_k": 3},
                {"fhir": EXAMPLE_BUNDLE, "patient_id": "p1"},
            ]
        },
    )

    case: Case | None = Field(
        default=None, description="The case, in feddx's case schema (its label is ignored)."
    )
    fhir: dict[str, Any] | None = Field(
        default=None,
        description="A FHIR R4 Bundle of one patient: the case is built at its most recent "
        "Encounter, earlier ones becoming history (as `feddx data prepare fhir` does).",
    )
    patient_id: str | None = Field(
        default=None,
        pattern=PATIENT_ID_PATTERN,
        description="Pseudonymous patient id whose history stored at this institution "
        "(PUT /v1/patients/{patient_id}/history) is added to the case.",
    )
    adapter: str | None = Field(
        default=None,
        pattern=ADAPTER_ID_PATTERN,
        description="Pin the answering adapter (a registry id such as "
        "'institutional/cleveland/v2'); it must belong to the caller's own chain.",
    )
    top_k: int | None = Field(
        default=None, ge=1, le=1000, description="Diagnoses to return (default: settings)."
    )
    candidates: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=1000,
        description="The candidate diagnoses the caller expects ranked: refused (503, naming "
        "the adapter) unless the answering adapter was trained on exactly these (any order).",
    )

    @model_validator(mode="after")
    def _one_input(self) -> DiagnoseRequest:
        if (self.case is None) == (self.fhir is None):
            raise ValueError("give exactly one of 'case' and 'fhir'")
        return self


class Diagnosis(_Strict):
    """One candidate of the differential."""

    name: str
    icd10: str | None
    probability: float = Field(ge=0, le=1)
    score: float = Field(description="The scorer's raw log-score (before the temperature).")


class AdapterRef(_Strict):
    id: str
    level: str
    version: int


class Chain(_Strict):
    """The adapter chain that answered: global first, the answering (most specific) adapter
    last; ``fallbacks`` says which more specific adapters were skipped and why."""

    adapters: list[AdapterRef]
    answering: str | None = Field(description="None: the base model alone answered.")
    fallbacks: list[str]
    base_model_only: bool = Field(
        default=False,
        description="True: no adapter verified and the untuned base model answered (only "
        "with the base_model_fallback setting; otherwise such a request gets 503).",
    )


class SimilarCaseRef(_Strict):
    """A past case of the institution the retrieval prior drew on: a short hash of its case id
    (``case#`` and 12 hex digits), its diagnosis and its similarity; never its text or id."""

    ref: str
    diagnosis: str
    similarity: float


class Individual(_Strict):
    """What the individual level added to this answer (the patient's history, the
    institution's similar past cases): counts and kinds, never the items' content."""

    history_items: int = Field(
        description="History items in the case given to the model (0: none were used)."
    )
    history: dict[str, int] = Field(
        description="Those items by kind: conditions, medications, encounters."
    )
    history_stored: bool = Field(
        description="True: the history stored for patient_id was merged into the case."
    )
    case_index: str | None = Field(
        description="The institution's case index (registry id) that was applied, if any."
    )
    similar_cases: list[SimilarCaseRef] = Field(
        description="The similar past cases whose diagnoses formed the retrieval prior."
    )
    prior_weight: float = Field(
        description="Weight of the institutional retrieval prior in the probabilities "
        "(chosen on validation when the index was built; 0: not used)."
    )


class Timing(_Strict):
    total_ms: float = Field(description="From the request's arrival to the response.")
    queue_ms: float = Field(description="Waiting for the scorer (micro-batching included).")
    scoring_ms: float = Field(description="This case's share of its batch's scoring time.")
    batch_cases: int = Field(description="Cases scored together in this case's batch.")


class DiagnoseResponse(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2a9c0d5b1e4f7a",
                    "model": "smollm2-135m-instruct",
                    "differential": [
                        {
                            "name": "Coronary artery disease, grade 1",
                            "icd10": "I25.10",
                            "probability": 0.41,
                            "score": -0.52,
                        },
                        {
                            "name": "No coronary artery disease",
                            "icd10": "Z03.89",
                            "probability": 0.33,
                            "score": -0.71,
                        },
                    ],
                    "chain": {
                        "adapters": [
                            {"id": "global/v2", "level": "global", "version": 2},
                            {"id": "regional/usa/v1", "level": "regional", "version": 1},
                        ],
                        "answering": "regional/usa/v1",
                        "fallbacks": ["institutional/cleveland/v3: content hash mismatch"],
                    },
                    "candidates": 5,
                    "history_used": False,
                    "institution_known": True,
                    "individual": {
                        "history_items": 0,
                        "history": {"conditions": 0, "medications": 0, "encounters": 0},
                        "history_stored": False,
                        "case_index": None,
                        "similar_cases": [],
                        "prior_weight": 0.0,
                    },
                    "timing": {
                        "total_ms": 212.0,
                        "queue_ms": 3.1,
                        "scoring_ms": 205.4,
                        "batch_cases": 1,
                    },
                }
            ]
        },
    )

    request_id: str
    model: str
    differential: list[Diagnosis]
    chain: Chain
    candidates: int = Field(description="How many candidate diagnoses were ranked.")
    history_used: bool
    institution_known: bool = Field(
        description="False: the registry holds nothing of the caller's institution, so its "
        "region's or the global adapter answered (never taken for the institution's own)."
    )
    individual: Individual
    timing: Timing


class AdapterSummary(_Strict):
    id: str
    level: str
    version: int
    region: str | None
    institution: str | None
    parent_id: str | None
    training_round: int | None
    metrics: dict[str, float]
    created_at: str


class ModelsResponse(_Strict):
    """The base model and the adapters the caller's institution may use."""

    model: str
    base_fingerprint: str
    ready: bool
    institution: str
    region: str | None
    chain: Chain
    adapters: list[AdapterSummary]
    candidates: list[str]
    institution_known: bool = Field(
        default=True,
        description="False: the registry holds nothing of this institution (see /v1/diagnose).",
    )
    case_index: str | None = Field(
        default=None,
        description="The institution's case index (registry id) answers would apply, if any.",
    )


class ErrorItem(_Strict):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(_Strict):
    """Every 4xx/5xx body: ``detail`` is one line, or (422) the fields at fault."""

    detail: str | list[ErrorItem]
    request_id: str | None = None


class Health(_Strict):
    status: Literal["ok", "loading", "failed", "unavailable"]
    detail: str | None = None


# ---------------------------------------------------------------- CDS Hooks 2.0


class CdsServiceDescription(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str
    title: str
    description: str
    id: str
    prefetch: dict[str, str]
    usageRequirements: str | None = None


class CdsDiscovery(BaseModel):
    services: list[CdsServiceDescription]


class CdsContext(BaseModel):
    """The ``patient-view`` context: the user and the patient in view (``encounterId``
    optional)."""

    model_config = ConfigDict(extra="allow")

    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1)
    encounterId: str | None = None


class CdsRequest(BaseModel):
    """A hook call. ``prefetch`` holds what the service's discovery entry asked for."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: UUID = Field(description="A UUID for this hook call (CDS Hooks 2.0).")
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None
    context: CdsContext
    prefetch: dict[str, dict[str, Any] | None] | None = None


class CdsCoding(_Strict):
    """A CDS Hooks Coding: ``code`` and ``system`` required, and ``display`` (required for
    override reasons)."""

    code: str = Field(min_length=1)
    system: str = Field(min_length=1)
    display: str = Field(min_length=1)


class CdsSource(_Strict):
    """A card's source. Optional attributes (``url``, ``icon``, ``topic``) are omitted, never
    null: the service has none to give."""

    label: str = Field(min_length=1)


class CdsCard(_Strict):
    uuid: str
    summary: str = Field(min_length=1, max_length=139)
    detail: str = Field(min_length=1)
    indicator: Literal["info", "warning", "critical"]
    source: CdsSource
    overrideReasons: list[CdsCoding] = Field(min_length=1)


class CdsResponse(_Strict):
    cards: list[CdsCard]


class CdsOverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: dict[str, Any] | None = None
    userComment: str | None = None


class CdsFeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: UUID = Field(description="The uuid of a card this service issued.")
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] | None = None
    overrideReason: CdsOverrideReason | None = None
    outcomeTimestamp: str = Field(min_length=1)


class CdsFeedback(BaseModel):
    feedback: list[CdsFeedbackItem] = Field(min_length=1)
