"""Gateway extension: a tenant reads its own usage and remaining allowance with its key."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.quotas.deps import QuotaServiceDep, ReadCaller
from app.quotas.schemas import UsageOut
from app.results.deps import ResultServiceDep
from app.results.schemas import StorageOut

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get(
    "/usage",
    response_model=UsageOut,
    responses={
        401: {"model": ErrorEnvelope, "description": "Missing or invalid API key"},
        403: {"model": ErrorEnvelope, "description": "The API key lacks the `read` scope"},
    },
    summary="Your usage and remaining allowance (gateway extension, not an upstream endpoint)",
)
async def my_usage(caller: ReadCaller, quotas: QuotaServiceDep, results: ResultServiceDep) -> UsageOut:
    """With an end-user token: that end user's own images of the day (the tenant's month and tasks in flight are
    the tenant's business, not shown)."""
    # The tenant's kept images (app/results), for its key: not an end user's business either.
    shown = results.enabled and caller.end_user is None
    storage = StorageOut.of(await results.usage(caller.tenant.id)) if shown else None
    return UsageOut.of(await quotas.usage(caller.tenant, caller.end_user), storage)
