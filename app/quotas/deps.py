"""The quota service, and the one dependency of every tenant route: who calls, may its key do this, within its rate.

`SubmitCaller`, `QueryCaller`, `UploadCaller` and `ReadCaller` are the authenticated tenant of a route, checked in
one dependency (a dependency costs FastAPI tens of microseconds to solve, and this is the hot path):

1. the key (401 `Invalid API key`): `TenantService.authenticate_key`, from memory when warm;
2. its scope (403 `forbidden`), before the rate check, so a key without the scope is not counted;
3. the tenant's per-minute rate for the route's kind (429 with `Retry-After`); error answers after this point carry
   the rate headers too (error_handlers.py reads `request.state.rate_headers`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials

from app.core.context import set_tenant
from app.models import Tenant
from app.quotas.rate_limits import RateLimitService
from app.quotas.service import QuotaService
from app.tenants.deps import tenant_bearer
from app.tenants.errors import Forbidden
from app.tenants.schemas import Scope
from app.tenants.service import TenantService


async def get_quota_service(request: Request) -> QuotaService:
    service: QuotaService = request.app.state.quotas
    return service


async def get_rate_limits(request: Request) -> RateLimitService:
    service: RateLimitService = request.app.state.rate_limits
    return service


QuotaServiceDep = Annotated[QuotaService, Depends(get_quota_service)]
RateLimitsDep = Annotated[RateLimitService, Depends(get_rate_limits)]

RateKind = tuple[str, Callable[[Tenant], int | None]]


def caller(scope: Scope, rate: RateKind | None) -> Callable[..., Awaitable[Tenant]]:
    """The dependency authenticating a tenant route's caller with `scope`, counted against `rate` if given."""

    async def dependency(
        request: Request,
        response: Response,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(tenant_bearer)],  # the OpenAPI's security
    ) -> Tenant:
        state = request.app.state
        tenants: TenantService = state.tenants
        who = await tenants.authenticate_key(request.headers.get("authorization"))
        set_tenant(who.tenant.id)  # for the request's log lines
        if scope not in who.scopes:
            raise Forbidden(f"This API key does not have the '{scope}' scope.")
        if rate is not None:
            kind, limit_of = rate
            limit = limit_of(who.tenant)
            if limit is not None:
                rate_limits: RateLimitService = state.rate_limits
                headers = await rate_limits.enforce(who.tenant.id, kind, limit)
                response.headers.update(headers)
                request.state.rate_headers = headers
        return who.tenant

    dependency.__name__ = f"{scope}_caller" + (f"_{rate[0]}_rate" if rate else "")
    return dependency


SUBMIT: RateKind = ("submit", lambda tenant: tenant.submit_rpm)
QUERY: RateKind = ("query", lambda tenant: tenant.query_rpm)
# Uploads are counted in a window of their own, against the submit rate: a burst of uploads cannot starve submits.
UPLOAD: RateKind = ("upload", lambda tenant: tenant.submit_rpm)

SubmitCaller = Annotated[Tenant, Depends(caller("submit", SUBMIT))]
QueryCaller = Annotated[Tenant, Depends(caller("read", QUERY))]
UploadCaller = Annotated[Tenant, Depends(caller("submit", UPLOAD))]
ReadCaller = Annotated[Tenant, Depends(caller("read", None))]
