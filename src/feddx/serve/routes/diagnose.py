"""``POST /v1/diagnose``: a case or a FHIR Bundle in, the ranked differential out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter

from feddx.serve.batching import ScoreResult
from feddx.serve.deps import Context, Institution, Service
from feddx.serve.fhir_input import case_from_bundle
from feddx.serve.middleware import RequestContext
from feddx.serve.schemas import (
    AdapterRef,
    Chain,
    DiagnoseRequest,
    DiagnoseResponse,
    Diagnosis,
    ErrorResponse,
    Individual,
    SimilarCaseRef,
    Timing,
)
from feddx.serve.service import IndividualUse

router = APIRouter(tags=["diagnosis"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in {
        400: "malformed JSON",
        401: "missing or invalid credentials",
        403: "the key may not diagnose, or the pinned adapter is another institution's",
        404: "the pinned adapter is not in the registry",
        413: "request body too large",
        422: "a field is invalid (its location is given, never its value)",
        429: "rate limit exceeded (see Retry-After)",
        503: "model loading, queue full, no candidate list, registry unreadable, or no "
        "adapter of the caller's chain verifies (the reason is given)",
        504: "the scorer did not answer in time",
    }.items()
}


@router.post("/v1/diagnose", response_model=DiagnoseResponse, responses=ERRORS)
async def diagnose(
    body: DiagnoseRequest, identity: Institution, service: Service, ctx: Context
) -> DiagnoseResponse:
    """Rank the candidate diagnoses for one case with the caller's institution's adapter
    chain (or the adapter it pins, if that belongs to its chain), the patient's history and
    the institution's case index (retrieval prior over its similar past cases) where the
    registry holds one; ``individual`` says what of these was used."""
    if body.fhir is not None:
        case = await asyncio.to_thread(
            case_from_bundle, body.fhir, deidentify=service.settings.fhir_deidentify
        )
    else:
        assert body.case is not None
        case = body.case
    prepared = await asyncio.to_thread(service.prepare, identity, case, body.patient_id)
    ctx.patient_ref = prepared.patient_ref
    ctx.cases = 1
    result = await service.score(identity, prepared.case, body.adapter, body.candidates)
    result, use = await service.individualize(prepared, result)
    record_chain(ctx, result)
    record_individual(ctx, result, use)
    top_k = body.top_k or service.settings.top_k
    return DiagnoseResponse(
        request_id=ctx.request_id,
        model=service.model_name,
        differential=[
            Diagnosis(name=r.name, icd10=r.icd10, probability=r.probability, score=r.score)
            for r in result.prediction.ranked[:top_k]
        ],
        chain=chain_of(result),
        candidates=len(result.prediction.ranked),
        history_used=prepared.history_used,
        institution_known=result.chain.institution_known,
        individual=individual_of(use),
        timing=Timing(
            total_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
            queue_ms=round(result.queue_ms, 3),
            scoring_ms=round(result.scoring_ms, 3),
            batch_cases=result.batch_cases,
        ),
    )


def chain_of(result: ScoreResult) -> Chain:
    chain = result.chain
    return Chain(
        adapters=[
            AdapterRef(id=e.adapter_id, level=e.level, version=e.version) for e in chain.entries
        ],
        answering=chain.adapter_name,
        fallbacks=list(chain.fallbacks),
        base_model_only=chain.base_model_only,
    )


def individual_of(use: IndividualUse) -> Individual:
    return Individual(
        history_items=use.history_items,
        history=dict(use.history),
        history_stored=use.history_stored,
        case_index=use.case_index,
        similar_cases=[
            SimilarCaseRef(ref=c.ref, diagnosis=c.diagnosis, similarity=c.similarity)
            for c in use.similar
        ],
        prior_weight=use.prior_weight,
    )


def record_individual(ctx: RequestContext, result: ScoreResult, use: IndividualUse) -> None:
    """The audit line's record of the individual level (counts, never content) and, when the
    registry does not know the caller's institution, that it was answered from above."""
    ctx.detail["individual"] = use.audit()
    if not result.chain.institution_known:
        ctx.detail["institution_known"] = False


def record_chain(ctx: RequestContext, result: ScoreResult) -> None:
    """What the audit line says about the answer: the chain and how many adapters were
    skipped."""
    ctx.adapter_chain = tuple(result.chain.ids())
    ctx.answering = result.chain.adapter_name
    ctx.fallbacks = len(result.chain.fallbacks)
