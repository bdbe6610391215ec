"""Ops API for tenants: limits and usage (admin bearer token)."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.core.deps import AdminDep, StateDep
from app.ops_contract import Limits, LimitsUpdate, UsageOut
from app.quotas import service as quotas
from app.tenants import service as tenant_service

router = APIRouter(
    prefix="/admin/v1/tenants",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}},
)


@router.get("/{tenant_id}/limits", response_model=Limits, summary="A tenant's limits")
async def get_limits(tenant_id: str, state: StateDep) -> Limits:
    async with state.sessions() as session:
        tenant = await tenant_service.get_tenant(session, tenant_id)
    return Limits(tenant_id=tenant.id, **tenant_service.limits_of(tenant))


@router.put("/{tenant_id}/limits", response_model=Limits, summary="Set limits (null = unlimited; omitted = unchanged)")
async def put_limits(tenant_id: str, body: LimitsUpdate, state: StateDep) -> Limits:
    async with state.sessions.begin() as session:
        tenant = await tenant_service.set_limits(session, tenant_id, body.model_dump(exclude_unset=True), state.clock())
    return Limits(tenant_id=tenant.id, **tenant_service.limits_of(tenant))


@router.get("/{tenant_id}/usage", response_model=UsageOut, summary="A tenant's usage in the current day and month")
async def get_usage(tenant_id: str, state: StateDep) -> UsageOut:
    async with state.sessions() as session:
        tenant = await tenant_service.get_tenant(session, tenant_id)
        return UsageOut.of(await quotas.usage(session, tenant, state.clock()))
