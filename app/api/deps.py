"""Dependencies shared by routers: the app state and the authenticated tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.models import Tenant
from app.services import tenants as tenant_service
from app.state import GatewayState


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_tenant(
    state: StateDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Tenant:
    async with state.sessions() as session:
        return await tenant_service.authenticate(session, state.keys, authorization, state.clock())


TenantDep = Annotated[Tenant, Depends(get_tenant)]
