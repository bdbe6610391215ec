"""Ops API for quotas: a tenant's usage, and whether every counter equals the sum of its ledger entries."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.core.deps import AdminDep
from app.quotas.deps import QuotaServiceDep
from app.quotas.schemas import DriftReport, UsageOut
from app.results.deps import ResultServiceDep
from app.results.schemas import StorageOut

router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}},
)


@router.get(
    "/tenants/{tenant_id}/usage", response_model=UsageOut, summary="A tenant's usage in the current day and month"
)
async def get_usage(tenant_id: str, quotas: QuotaServiceDep, results: ResultServiceDep) -> UsageOut:
    usage = await quotas.usage_of(tenant_id)
    storage = StorageOut.of(await results.usage(usage.tenant_id)) if results.enabled else None
    return UsageOut.of(usage, storage)


@router.get("/quota/drift", response_model=DriftReport, summary="Counters that differ from their ledger entries")
async def get_drift(quotas: QuotaServiceDep, tenant_id: str | None = None) -> DriftReport:
    """Every tenant, or only `tenant_id` (an id or a name; 404 when no such tenant)."""
    return DriftReport.of(await quotas.drift(tenant_id))
