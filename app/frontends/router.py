"""Gateway extension: a team's backend mints a short-lived token for one of its end users, for a browser to hold.

The minting key needs the `mint` scope (never given by default). The token works as a key does on submit, status,
the event stream, uploads and usage, for that end user's own tasks only, within its own limits and the tenant's
(app/tenants/tokens.py, app/access/policy.py).
"""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.quotas.deps import MintCaller
from app.tenants.deps import TenantServiceDep
from app.tenants.schemas import TokenCreate, TokenOut

router = APIRouter(prefix="/v1", tags=["tokens"])


@router.post(
    "/tokens",
    response_model=TokenOut,
    responses={
        401: {"model": ErrorEnvelope, "description": "Missing or invalid API key"},
        403: {
            "model": ErrorEnvelope,
            "description": "The key lacks the `mint` scope (a token never mints), or asks for a scope it lacks "
            "(`scope_not_held`)",
        },
    },
    summary="Mint a short-lived token for one of your end users (gateway extension)",
)
async def mint_token(body: TokenCreate, caller: MintCaller, tenants: TenantServiceDep) -> TokenOut:
    """Call it from your backend with a key that has the `mint` scope, and hand the token to the end user's browser,
    which sends it as `Authorization: Bearer <token>`. The token reads only this end user's tasks (another's is a
    404), counts its images and submits inside the tenant's limits as well as its own, never mints, never reaches
    `/admin`, and stops working at `expires_at`, when its key is revoked (or rotated past its grace), the tenant is
    disabled, or ops revoke the tenant's tokens (`POST /admin/v1/tenants/{id}/tokens/revoke`)."""
    return tenants.mint_token(caller, body)
