"""Ops API for tenants: limits (admin bearer token)."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.core.limits import LimitsUpdate
from app.deps import AdminDep
from app.tenants.deps import TenantServiceDep
from app.tenants.schemas import Limits

router = APIRouter(
    prefix="/admin/v1/tenants",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}},
)


@router.get("/{tenant_id}/limits", response_model=Limits, summary="A tenant's limits")
async def get_limits(tenant_id: str, tenants: TenantServiceDep) -> Limits:
    return await tenants.limits(tenant_id)


@router.put("/{tenant_id}/limits", response_model=Limits, summary="Set limits (null = unlimited; omitted = unchanged)")
async def put_limits(tenant_id: str, body: LimitsUpdate, tenants: TenantServiceDep) -> Limits:
    return await tenants.set_limits(tenant_id, body)
