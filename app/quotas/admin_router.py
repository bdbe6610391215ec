"""Ops API: check that every quota counter equals the sum of its ledger entries."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.core.deps import AdminDep
from app.quotas.deps import QuotaServiceDep
from app.quotas.schemas import DriftReport

router = APIRouter(
    prefix="/admin/v1/quota",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}},
)


@router.get("/drift", response_model=DriftReport, summary="Counters that differ from their ledger entries")
async def get_drift(quotas: QuotaServiceDep, tenant_id: str | None = None) -> DriftReport:
    """Every tenant, or only `tenant_id` (an id or a name; 404 when no such tenant)."""
    return DriftReport.of(await quotas.drift(tenant_id))
