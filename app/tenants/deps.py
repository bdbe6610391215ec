"""The tenant service as a dependency, and the tenant key's security scheme for the OpenAPI document.

The tenant routes' own dependency (key, scope and rate checked in one) is app/quotas/deps.py `caller`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.tenants.service import TenantService


async def get_tenant_service(request: Request) -> TenantService:
    service: TenantService = request.app.state.tenants
    return service


TenantServiceDep = Annotated[TenantService, Depends(get_tenant_service)]

# Declared for the OpenAPI document (and Swagger's "Authorize"); the header itself is parsed in one place, the service.
tenant_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="TenantKey",
    description="A tenant API key (`sk-gw-...`), or an end-user token one minted (`gwt_...`: POST /v1/tokens).",
)
