"""``GET /v1/models``: the base model and the adapters the caller's institution may use."""

from __future__ import annotations

from fastapi import APIRouter

from feddx.serve.deps import Institution, Service
from feddx.serve.routes.diagnose import ERRORS
from feddx.serve.schemas import AdapterRef, AdapterSummary, Chain, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse, responses=ERRORS)
async def models(identity: Institution, service: Service) -> ModelsResponse:
    """The base model, the chain that would answer this institution now, every registered
    adapter it may pin (its own, its region's, the global ones), and the candidate list.
    Other institutions' adapters are not listed."""
    scheduler = service.scheduler
    if scheduler is None:
        return ModelsResponse(
            model=service.model_name,
            base_fingerprint="",
            ready=False,
            institution=identity.institution,
            region=identity.region,
            chain=Chain(adapters=[], answering=None, fallbacks=[]),
            adapters=[],
            candidates=[],
        )
    pool = scheduler.pool

    def gather():  # type: ignore[no-untyped-def]
        chain, fallbacks, candidates = pool.describe(identity.institution, identity.region)
        usable = pool.entries_for(identity.institution, identity.region)
        return (
            chain,
            fallbacks,
            candidates,
            usable,
            pool.known_and_index(identity.institution, identity.region),
        )

    chain, fallbacks, candidates, usable, (known, index) = await service.on_scorer(gather)
    return ModelsResponse(
        model=service.model_name,
        base_fingerprint=service.base_fingerprint,
        ready=service.status == "ok",
        institution=identity.institution,
        region=identity.region,
        chain=Chain(
            adapters=[AdapterRef(id=e.adapter_id, level=e.level, version=e.version) for e in chain],
            answering=chain[-1].adapter_id if chain else None,
            fallbacks=fallbacks,
        ),
        adapters=[
            AdapterSummary(
                id=e.adapter_id,
                level=e.level,
                version=e.version,
                region=e.region,
                institution=e.institution,
                parent_id=e.parent_id,
                training_round=e.training_round,
                metrics=dict(e.metrics),
                created_at=e.created_at,
            )
            for e in usable
        ],
        candidates=list(candidates.names) if candidates else [],
        institution_known=known,
        case_index=index,
    )
