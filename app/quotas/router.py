"""Gateway extension: a tenant reads its own usage and remaining allowance with its key."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.core.deps import StateDep, TenantDep
from app.ops_contract import UsageOut
from app.quotas import service as quotas

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get(
    "/usage",
    response_model=UsageOut,
    responses={401: {"model": ErrorEnvelope}},
    summary="Your usage and remaining allowance (gateway extension, not an upstream endpoint)",
)
async def my_usage(tenant: TenantDep, state: StateDep) -> UsageOut:
    async with state.sessions() as session:
        return UsageOut.of(await quotas.usage(session, tenant, state.clock()))
