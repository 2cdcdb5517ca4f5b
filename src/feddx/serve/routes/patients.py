"""Stored patient histories: an institution puts, reads and deletes its own patients'
histories; another institution's patient is simply not found."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response

from feddx.data.schema import History
from feddx.serve.deps import Context, Institution, Service
from feddx.serve.history import HistoryStore
from feddx.serve.routes.diagnose import ERRORS
from feddx.serve.schemas import PATIENT_ID_PATTERN
from feddx.serve.service import DiagnosisService

router = APIRouter(prefix="/v1/patients", tags=["patients"])

PatientId = Annotated[str, Path(pattern=PATIENT_ID_PATTERN, description="Pseudonymous id.")]


def _store(service: DiagnosisService) -> HistoryStore:
    if service.histories is None:
        raise HTTPException(404, "patient histories are not enabled on this service")
    return service.histories


@router.put("/{patient_id}/history", status_code=204, responses=ERRORS)
async def put_history(
    patient_id: PatientId, history: History, identity: Institution, service: Service, ctx: Context
) -> Response:
    """Store (replace) this institution's history of the patient."""
    store = _store(service)
    ctx.patient_ref = service.audit.patient_ref(identity.institution, patient_id)
    await asyncio.to_thread(store.put, identity.institution, patient_id, history)
    return Response(status_code=204)


@router.get("/{patient_id}/history", response_model=History, responses=ERRORS)
async def get_history(
    patient_id: PatientId, identity: Institution, service: Service, ctx: Context
) -> History:
    """This institution's stored history of the patient (404 if none)."""
    store = _store(service)
    ctx.patient_ref = service.audit.patient_ref(identity.institution, patient_id)
    found = await asyncio.to_thread(store.get, identity.institution, patient_id)
    if found is None:
        raise HTTPException(404, "no stored history for this patient at your institution")
    return found


@router.delete("/{patient_id}/history", status_code=204, responses=ERRORS)
async def delete_history(
    patient_id: PatientId, identity: Institution, service: Service, ctx: Context
) -> Response:
    """Delete this institution's stored history of the patient (404 if none)."""
    store = _store(service)
    ctx.patient_ref = service.audit.patient_ref(identity.institution, patient_id)
    if not await asyncio.to_thread(store.delete, identity.institution, patient_id):
        raise HTTPException(404, "no stored history for this patient at your institution")
    return Response(status_code=204)
