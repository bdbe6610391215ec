"""The quota service, and the one dependency of every tenant route: the access decision (app/access/policy.py).

`SubmitCaller`, `QueryCaller`, `UploadCaller`, `ReadCaller` and `MintCaller` are the admitted caller of a route (a
tenant key, or an end-user token: `AuthenticatedKey`, its `tenant` and, for a token, its `end_user`): one dependency
(a dependency costs FastAPI tens of microseconds to solve, and this is the hot path) that calls `policy.decide` and
puts the rate headers on the answer; error answers after the rate check carry them too (error_handlers.py reads
`request.state.rate_headers`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials

from app.access import policy
from app.access.policy import MINTING, QUERYING, READING, SUBMITTING, UPLOADING, Need
from app.quotas.rate_limits import RateLimitService
from app.quotas.service import QuotaService
from app.tenants.deps import tenant_bearer
from app.tenants.service import AuthenticatedKey


async def get_quota_service(request: Request) -> QuotaService:
    service: QuotaService = request.app.state.quotas
    return service


async def get_rate_limits(request: Request) -> RateLimitService:
    service: RateLimitService = request.app.state.rate_limits
    return service


QuotaServiceDep = Annotated[QuotaService, Depends(get_quota_service)]
RateLimitsDep = Annotated[RateLimitService, Depends(get_rate_limits)]


def caller(need: Need) -> Callable[..., Awaitable[AuthenticatedKey]]:
    """The dependency admitting a tenant route's caller for what the route needs (`policy.decide`)."""

    async def dependency(
        request: Request,
        response: Response,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(tenant_bearer)],  # the OpenAPI's security
    ) -> AuthenticatedKey:
        state, headers = request.app.state, request.headers
        decision = await policy.decide(
            state.tenants, state.rate_limits, headers.get("authorization"), need, headers.get("origin")
        )
        if decision.rate_headers:
            response.headers.update(decision.rate_headers)
            request.state.rate_headers = decision.rate_headers
        if decision.counted:  # given back by the error handler if the route refuses it after all (402, 429)
            request.state.uncount = functools.partial(state.rate_limits.give_back, list(decision.counted))
        return decision.who

    dependency.__name__ = f"{need.scope}_caller" + (f"_{need.rate.name}_rate" if need.rate else "")
    return dependency


SubmitCaller = Annotated[AuthenticatedKey, Depends(caller(SUBMITTING))]
QueryCaller = Annotated[AuthenticatedKey, Depends(caller(QUERYING))]
UploadCaller = Annotated[AuthenticatedKey, Depends(caller(UPLOADING))]
ReadCaller = Annotated[AuthenticatedKey, Depends(caller(READING))]
MintCaller = Annotated[AuthenticatedKey, Depends(caller(MINTING))]
