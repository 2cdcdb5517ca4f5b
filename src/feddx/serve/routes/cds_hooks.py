"""CDS Hooks 2.0: discovery, the ``patient-view`` service, and its feedback endpoint.

The EHR calls ``POST /cds-services/feddx-differential`` when a clinician opens a patient's
chart, with the patient's record in ``prefetch`` (the templates in the discovery response).
The service never calls back into the EHR's FHIR server (it runs without outbound network),
so a missing prefetch item is 412 Precondition Failed, as the specification prescribes for a
service that cannot fetch the data itself. The answer is one card whose summary names the top
diagnosis with its probability and ICD-10 code and whose detail lists the differential and the
adapter chain that answered; ``{"cards": []}`` when the record holds nothing to diagnose from.

Card ``indicator``: ``warning`` when the top diagnosis is at least ``_WARNING_PROBABILITY``
likely and is not an ICD-10 Z code (Z codes record that a condition was ruled out or a
circumstance, not a disease), ``info`` otherwise.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException

from feddx.data.schema import Case
from feddx.serve.batching import ScoreResult
from feddx.serve.deps import Context, Institution, Service
from feddx.serve.fhir_input import case_from_prefetch
from feddx.serve.prefetch import OPTIONAL, PREFETCH, PREFETCH_TYPES
from feddx.serve.routes.diagnose import ERRORS, record_chain, record_individual
from feddx.serve.schemas import (
    CdsCard,
    CdsCoding,
    CdsDiscovery,
    CdsFeedback,
    CdsOverrideReason,
    CdsRequest,
    CdsResponse,
    CdsServiceDescription,
    CdsSource,
)
from feddx.serve.service import IndividualUse

router = APIRouter(prefix="/cds-services", tags=["CDS Hooks"])

SERVICE_ID = "feddx-differential"
HOOK = "patient-view"
OVERRIDE_SYSTEM = "urn:feddx:cds:override-reason"
# The override reasons every card offers; feedback records a reason's code only when it is one
# of these (anything else is recorded as "unlisted", never as the text the client sent).
OVERRIDE_REASONS = (
    CdsCoding(
        code="diagnosis-established",
        system=OVERRIDE_SYSTEM,
        display="Diagnosis already established",
    ),
    CdsCoding(code="not-relevant", system=OVERRIDE_SYSTEM, display="Not relevant to this visit"),
    CdsCoding(code="disagree-ranking", system=OVERRIDE_SYSTEM, display="Disagree with the ranking"),
    CdsCoding(
        code="record-incomplete", system=OVERRIDE_SYSTEM, display="The record is too incomplete"
    ),
)
_OVERRIDE_CODES = {(c.system, c.code) for c in OVERRIDE_REASONS}
_WARNING_PROBABILITY = 0.8
_DETAIL_ROWS = 5
_CDS_ERRORS = {**ERRORS, 412: {"description": "required prefetch data is missing"}}

DESCRIPTION = CdsServiceDescription(
    hook=HOOK,
    id=SERVICE_ID,
    title="feddx differential diagnosis",
    description="Ranks candidate diagnoses for the patient in view with the institution's "
    "personalized model; shows the top diagnoses with probabilities and ICD-10 codes.",
    prefetch=PREFETCH,
    usageRequirements="Prefetch of Patient, Conditions, Observations and Encounters is "
    "required (the most recent 100, 100 and 20), of MedicationRequests (the most recent 50) "
    "optional; the service does not query the EHR's FHIR server.",
)


@router.get("", response_model=CdsDiscovery, responses=ERRORS)
async def discovery(_identity: Institution) -> CdsDiscovery:
    """The CDS services offered (one ``patient-view`` service)."""
    return CdsDiscovery(services=[DESCRIPTION])


@router.post("/{service_id}", response_model=CdsResponse, responses=_CDS_ERRORS)
async def call_service(
    service_id: str, body: CdsRequest, identity: Institution, service: Service, ctx: Context
) -> CdsResponse:
    """Answer a ``patient-view`` hook call with one card (or none)."""
    if service_id != SERVICE_ID:
        raise HTTPException(404, "no such CDS service; see GET /cds-services")
    if body.hook != HOOK:
        raise HTTPException(400, f"service {SERVICE_ID} answers the {HOOK} hook only")
    prefetch: dict[str, Any] = body.prefetch or {}
    missing = [k for k in PREFETCH if k not in OPTIONAL and not isinstance(prefetch.get(k), dict)]
    if missing:
        ctx.outcome = "refused: prefetch missing"
        raise HTTPException(412, f"prefetch lacks {', '.join(missing)}")
    patient = prefetch["patient"]
    if patient.get("resourceType") != "Patient" or patient.get("id") != body.context.patientId:
        raise HTTPException(
            422, "prefetch.patient must be the Patient resource of context.patientId"
        )
    case = await asyncio.to_thread(
        case_from_prefetch,
        prefetch,
        PREFETCH_TYPES,
        deidentify=service.settings.fhir_deidentify,
    )
    if not _has_clinical_data(case):
        ctx.outcome = "ok: nothing to say"
        return CdsResponse(cards=[])
    prepared = await asyncio.to_thread(service.prepare, identity, case, body.context.patientId)
    ctx.patient_ref = prepared.patient_ref
    ctx.cases = 1
    result = await service.score(
        identity,
        prepared.case,
        None,
        max_prompt_tokens=service.settings.cds_max_prompt_tokens,
    )
    result, use = await service.individualize(prepared, result)
    record_chain(ctx, result)
    record_individual(ctx, result, use)
    card = _card(result, service.model_name, use)
    service.remember_card(card.uuid, identity.institution)
    ctx.detail |= {"card": card.uuid, "hook_instance": str(body.hookInstance)}
    return CdsResponse(cards=[card])


@router.post("/{service_id}/feedback", responses=ERRORS)
async def feedback(
    service_id: str, body: CdsFeedback, identity: Institution, service: Service, ctx: Context
) -> dict[str, Any]:
    """Record what the clinician did with the cards (accepted, overridden and the coded
    override reason) in the audit log; free-text comments are not recorded."""
    if service_id != SERVICE_ID:
        raise HTTPException(404, "no such CDS service; see GET /cds-services")
    items = []
    for item in body.feedback:
        card = str(item.card)
        items.append(
            {
                "card": card,
                "outcome": item.outcome,
                "known_card": service.cds_cards.get(card) == identity.institution,
                "override_reason": _override_code(item.overrideReason),
                "accepted_suggestions": len(item.acceptedSuggestions or []),
            }
        )
    ctx.outcome = "ok: feedback"
    ctx.detail = {"feedback": items}
    return {}


def _override_code(given: CdsOverrideReason | None) -> str | None:
    """The code of one of :data:`OVERRIDE_REASONS`, ``"unlisted"`` for any other reason, or
    ``None`` without one: the audit log never holds a code or text the client made up."""
    reason = given.reason if given is not None else None
    if not isinstance(reason, dict) or not reason:
        return None
    key = (reason.get("system"), reason.get("code"))
    return str(key[1]) if key in _OVERRIDE_CODES else "unlisted"


def _has_clinical_data(case: Case) -> bool:
    """Whether anything beyond demographics and the kind of visit is known."""
    findings = [f for f in case.findings if f.name != "visit"]
    return bool(findings or case.text or not case.history.is_empty())


def _individual_text(result: ScoreResult, use: IndividualUse) -> str:
    """One paragraph on what the individual level used (counts and kinds, no content) and,
    when the registry does not know the institution, that a less specific adapter answered."""
    kinds = ", ".join(f"{n} {k}" for k, n in use.history.items() if n) or "none"
    text = f"\n\nPatient history used: {use.history_items} item(s) ({kinds})."
    if use.case_index:
        text += (
            f" Similar past cases of this institution: {len(use.similar)} "
            f"(retrieval prior weight {use.prior_weight:g}, {use.case_index})."
        )
    if not result.chain.institution_known:
        text += " This institution is unknown to the adapter registry: a less specific adapter answered."
    return text


def _card(result: ScoreResult, model: str, use: IndividualUse) -> CdsCard:
    ranked = result.prediction.ranked
    top = ranked[0]
    code = f" ({top.icd10})" if top.icd10 else ""
    untuned = "Untuned base model (no adapter verified). " if result.chain.base_model_only else ""
    summary = f"{untuned}Most likely: {top.name}{code}, {top.probability:.0%}"
    if len(summary) > 139:  # "<140-character" (CDS Hooks 2.0, card.summary)
        summary = summary[:138] + "…"
    rows = "\n".join(
        f"| {r.name} | {r.icd10 or '-'} | {r.probability:.1%} |" for r in ranked[:_DETAIL_ROWS]
    )
    chain = " → ".join(result.chain.ids()) or "base model (no adapter)"
    fallbacks = (
        "\n\nSkipped: " + "; ".join(result.chain.fallbacks) if result.chain.fallbacks else ""
    )
    detail = (
        "| Diagnosis | ICD-10 | Probability |\n|---|---|---|\n"
        f"{rows}\n\nAnswered by {chain} on {model}.{fallbacks}"
        f"{_individual_text(result, use)}\n\n"
        "Decision support only: a ranked differential over a fixed candidate list, "
        "not a diagnosis."
    )
    warning = top.probability >= _WARNING_PROBABILITY and not (top.icd10 or "Z").startswith("Z")
    return CdsCard(
        uuid=str(uuid.uuid4()),
        summary=summary,
        detail=detail,
        indicator="warning" if warning else "info",
        source=CdsSource(label=f"feddx ({result.chain.adapter_name or 'base model'})"),
        overrideReasons=list(OVERRIDE_REASONS),
    )
