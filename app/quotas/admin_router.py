"""Ops API: check that every quota counter equals the sum of its ledger entries."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.core.deps import AdminDep, StateDep
from app.ops_contract import DriftReport
from app.quotas import service as quotas

router = APIRouter(
    prefix="/admin/v1/quota", tags=["admin"], dependencies=[AdminDep], responses={401: {"model": ErrorEnvelope}}
)


@router.get("/drift", response_model=DriftReport, summary="Counters that differ from their ledger entries")
async def get_drift(state: StateDep, tenant_id: str | None = None) -> DriftReport:
    async with state.sessions() as session:
        return DriftReport.of(await quotas.drift(session, tenant_id))
