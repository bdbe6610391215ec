"""The tenant service and the authenticated tenant, as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.models import Tenant
from app.tenants.service import TenantService


async def get_tenant_service(request: Request) -> TenantService:
    service: TenantService = request.app.state.tenants
    return service


TenantServiceDep = Annotated[TenantService, Depends(get_tenant_service)]

# Declared for the OpenAPI document (and Swagger's "Authorize"); the header itself is parsed in one place, the service.
_tenant_bearer = HTTPBearer(auto_error=False, scheme_name="TenantKey", description="A tenant API key (`sk-gw-...`).")


async def get_tenant(
    tenants: TenantServiceDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_tenant_bearer)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Tenant:
    return await tenants.authenticate(authorization)


TenantDep = Annotated[Tenant, Depends(get_tenant)]
