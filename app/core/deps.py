"""Dependencies shared by every feature's router: the kernel and the ops API's bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.errors import Unauthorized
from app.core.runtime import Kernel
from app.core.security import bearer_token, constant_time_equals


async def get_kernel(request: Request) -> Kernel:
    kernel: Kernel = request.app.state.kernel
    return kernel


KernelDep = Annotated[Kernel, Depends(get_kernel)]

# Declared for the OpenAPI document (and Swagger's "Authorize"); the header itself is parsed by `bearer_token`.
admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="`GATEWAY_ADMIN_TOKEN`.")


async def require_admin(
    kernel: KernelDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(admin_bearer)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The ops API's bearer token, compared in constant time; a tenant key is just a wrong token here."""
    token = bearer_token(authorization)
    if token is None or not constant_time_equals(token, kernel.settings.secrets.admin_token):
        raise Unauthorized("Invalid admin token")


AdminDep = Depends(require_admin)
