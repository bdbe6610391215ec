"""The tenant service, the authenticated tenant and key, and the scope checks, as dependencies.

Authentication happens once per request (FastAPI caches `get_authenticated_key`): `TenantDep` and every
`require_scope` dependency of a route share it. A route that needs a scope lists it before its rate check, so a key
without the scope is refused (403) before it is counted:

    @router.post(..., dependencies=[SubmitScope, SubmitRate])     # generations, uploads
    @router.get(..., dependencies=[ReadScope, QueryRate])         # task status, /v1/usage
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.models import Tenant
from app.tenants.errors import Forbidden
from app.tenants.schemas import Scope
from app.tenants.service import AuthenticatedKey, TenantService


async def get_tenant_service(request: Request) -> TenantService:
    service: TenantService = request.app.state.tenants
    return service


TenantServiceDep = Annotated[TenantService, Depends(get_tenant_service)]

# Declared for the OpenAPI document (and Swagger's "Authorize"); the header itself is parsed in one place, the service.
_tenant_bearer = HTTPBearer(auto_error=False, scheme_name="TenantKey", description="A tenant API key (`sk-gw-...`).")


async def get_authenticated_key(
    tenants: TenantServiceDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_tenant_bearer)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> AuthenticatedKey:
    return await tenants.authenticate_key(authorization)


AuthenticatedKeyDep = Annotated[AuthenticatedKey, Depends(get_authenticated_key)]


async def get_tenant(authenticated: AuthenticatedKeyDep) -> Tenant:
    return authenticated.tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def require_scope(scope: Scope) -> Callable[[AuthenticatedKey], Awaitable[None]]:
    """A dependency refusing (403 `forbidden`) a key without `scope`."""

    async def dependency(authenticated: AuthenticatedKeyDep) -> None:
        if scope not in authenticated.scopes:
            raise Forbidden(f"This API key does not have the '{scope}' scope.")

    dependency.__name__ = f"require_{scope}_scope"
    return dependency


SubmitScope = Depends(require_scope("submit"))
ReadScope = Depends(require_scope("read"))
