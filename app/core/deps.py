"""Dependencies shared by routers: the app state and the authenticated tenant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.errors import Unauthorized
from app.core.security import constant_time_equals
from app.models import Tenant
from app.state import GatewayState
from app.tenants import service as tenant_service


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


# Declared for the OpenAPI document (and Swagger's "Authorize"); the header itself is parsed in one place, the service.
_tenant_bearer = HTTPBearer(auto_error=False, scheme_name="TenantKey", description="A tenant API key (`sk-gw-...`).")
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="`GATEWAY_ADMIN_TOKEN`.")


async def get_tenant(
    state: StateDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_tenant_bearer)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Tenant:
    async with state.sessions() as session:
        return await tenant_service.authenticate(session, state.keys, authorization, state.clock())


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def rate_limited(kind: str, limit_of: Callable[[Tenant], int | None]) -> Callable[..., Awaitable[None]]:
    """A dependency counting one request of `kind` against the tenant's per-minute limit (429 when over)."""

    async def dependency(tenant: TenantDep, state: StateDep, request: Request, response: Response) -> None:
        headers = await state.rate_limits.enforce(tenant.id, kind, limit_of(tenant))
        response.headers.update(headers)
        request.state.rate_headers = headers  # error answers after this point carry them too (api/errors.py)

    return dependency


SubmitRate = Depends(rate_limited("submit", lambda tenant: tenant.submit_rpm))
QueryRate = Depends(rate_limited("query", lambda tenant: tenant.query_rpm))


async def require_admin(
    state: StateDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_admin_bearer)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The ops API's bearer token, compared in constant time; a tenant key is just a wrong token here."""
    scheme, _sep, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not constant_time_equals(token.strip(), state.settings.secrets.admin_token):
        raise Unauthorized("Invalid admin token")


AdminDep = Depends(require_admin)
