"""The quota service and the per-minute rate checks, as dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response

from app.models import Tenant
from app.quotas.rate_limits import RateLimitService
from app.quotas.service import QuotaService
from app.tenants.deps import TenantDep


async def get_quota_service(request: Request) -> QuotaService:
    service: QuotaService = request.app.state.quotas
    return service


async def get_rate_limits(request: Request) -> RateLimitService:
    service: RateLimitService = request.app.state.rate_limits
    return service


QuotaServiceDep = Annotated[QuotaService, Depends(get_quota_service)]
RateLimitsDep = Annotated[RateLimitService, Depends(get_rate_limits)]


def rate_limited(kind: str, limit_of: Callable[[Tenant], int | None]) -> Callable[..., Awaitable[None]]:
    """A dependency counting one request of `kind` against the tenant's per-minute limit (429 when over)."""

    async def dependency(tenant: TenantDep, limits: RateLimitsDep, request: Request, response: Response) -> None:
        headers = await limits.enforce(tenant.id, kind, limit_of(tenant))
        response.headers.update(headers)
        request.state.rate_headers = headers  # error answers after this point carry them too (error_handlers.py)

    return dependency


SubmitRate = Depends(rate_limited("submit", lambda tenant: tenant.submit_rpm))
QueryRate = Depends(rate_limited("query", lambda tenant: tenant.query_rpm))
# Uploads are counted in a window of their own, against the submit rate: a burst of uploads cannot starve submits.
UploadRate = Depends(rate_limited("upload", lambda tenant: tenant.submit_rpm))
