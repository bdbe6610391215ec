"""Ops API for tenants and tenant keys (admin bearer token): tenants, their keys, rotation, revocation, limits.

Lists are paginated (`limit`, `cursor` -> `next_cursor`); no answer carries a key except the one that makes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.audit.service import ACTOR_ADMIN_TOKEN
from app.contract import NO_CONTROL_PATTERN, ErrorEnvelope
from app.core.deps import AdminDep
from app.core.limits import LimitsUpdate
from app.core.pagination import DEFAULT_PAGE, PAGE_ERRORS, limit_query
from app.tenants.deps import TenantServiceDep
from app.tenants.schemas import (
    DEFAULT_GRACE_S,
    KEY_CURSOR,
    TENANT_CURSOR,
    KeyCreate,
    KeyList,
    KeyOut,
    KeyRotate,
    Limits,
    NewKeyOut,
    TenantCreate,
    TenantCreated,
    TenantList,
    TenantOut,
    TenantUpdate,
    TokensRevoked,
)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorEnvelope} for status in statuses}


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[AdminDep], responses=_errors(401, 404))

Limit = Annotated[int, limit_query()]


@router.get("/tenants/{tenant_id}/limits", response_model=Limits, summary="A tenant's limits")
async def get_limits(tenant_id: str, tenants: TenantServiceDep) -> Limits:
    return await tenants.limits(tenant_id)


@router.put(
    "/tenants/{tenant_id}/limits",
    response_model=Limits,
    summary="Set limits (null = unlimited; omitted = unchanged)",
)
async def put_limits(tenant_id: str, body: LimitsUpdate, tenants: TenantServiceDep) -> Limits:
    return await tenants.set_limits(tenant_id, body, actor=ACTOR_ADMIN_TOKEN)


# --- tenants --------------------------------------------------------------------------------------------------------
@router.post(
    "/tenants",
    response_model=TenantCreated,
    status_code=201,
    responses=_errors(400, 409),
    summary="Create a tenant and its first key (the key is shown this once)",
)
async def create_tenant(body: TenantCreate, tenants: TenantServiceDep) -> TenantCreated:
    return await tenants.create_tenant(body.name, body.limits, actor=ACTOR_ADMIN_TOKEN)


@router.get("/tenants", response_model=TenantList, responses=PAGE_ERRORS, summary="Tenants, oldest first")
async def list_tenants(
    tenants: TenantServiceDep,
    limit: Limit = DEFAULT_PAGE,
    cursor: Annotated[str | None, TENANT_CURSOR.query()] = None,
    name_contains: Annotated[
        str | None,
        Query(max_length=200, pattern=NO_CONTROL_PATTERN, description="Only tenants whose name holds this."),
    ] = None,
) -> TenantList:
    return await tenants.list_tenants(limit=limit, cursor=cursor, name_contains=name_contains)


@router.get("/tenants/{tenant_id}", response_model=TenantOut, summary="A tenant (by id or name)")
async def get_tenant(tenant_id: str, tenants: TenantServiceDep) -> TenantOut:
    return await tenants.describe(tenant_id)


@router.patch(
    "/tenants/{tenant_id}",
    response_model=TenantOut,
    responses=_errors(400, 409),
    summary="Rename, disable or enable a tenant, or set its browser origins (CORS)",
)
async def update_tenant(tenant_id: str, body: TenantUpdate, tenants: TenantServiceDep) -> TenantOut:
    """`status: disabled` refuses every key of the tenant (401) until it is `active` again (and every token its keys
    minted); its open tasks still settle. Omitted (or null) fields stay as they are, but `cors_origins`: null is
    the gateway's default again."""
    origins = body.cors_origins if "cors_origins" in body.model_fields_set else ...
    return await tenants.update_tenant(
        tenant_id, name=body.name, status=body.status, cors_origins=origins, actor=ACTOR_ADMIN_TOKEN
    )


@router.post(
    "/tenants/{tenant_id}/tokens/revoke",
    response_model=TokensRevoked,
    summary="Revoke every end-user token minted for a tenant until now",
)
async def revoke_tokens(tenant_id: str, tenants: TenantServiceDep) -> TokensRevoked:
    """Every token the tenant's keys minted until now is refused (401), on every replica within a second; tokens
    minted afterwards work. (Revoking a key, or disabling the tenant, refuses its tokens too.)"""
    return await tenants.revoke_tokens(tenant_id, actor=ACTOR_ADMIN_TOKEN)


@router.delete("/tenants/{tenant_id}", response_model=TenantOut, summary="Delete a tenant (its ledger and usage stay)")
async def delete_tenant(tenant_id: str, tenants: TenantServiceDep) -> TenantOut:
    """Every key of the tenant is refused from now on, and the tenant (its keys, limits and usage) is gone from the
    ops API: 404 afterwards. Nothing is erased: its ledger and usage rows stay, its open tasks still settle, and its
    name stays taken. Answered once with `status: deleted`. To stop a tenant reversibly, PATCH
    `{"status": "disabled"}` (and `{"status": "active"}` to enable it again)."""
    return await tenants.delete(tenant_id, actor=ACTOR_ADMIN_TOKEN)


# --- keys -----------------------------------------------------------------------------------------------------------
@router.post(
    "/tenants/{tenant_id}/keys",
    response_model=NewKeyOut,
    status_code=201,
    responses=_errors(400, 409),
    summary="Create another key for a tenant (the key is shown this once)",
)
async def create_key(tenant_id: str, tenants: TenantServiceDep, body: KeyCreate | None = None) -> NewKeyOut:
    """409 `invalid_expiry` when `expires_at` is not in the future."""
    body = body or KeyCreate()
    return await tenants.create_key(
        tenant_id,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        expires_in_s=body.expires_in_s,
        actor=ACTOR_ADMIN_TOKEN,
    )


@router.get(
    "/tenants/{tenant_id}/keys",
    response_model=KeyList,
    responses=PAGE_ERRORS,
    summary="A tenant's keys (ids and prefixes, never the keys), oldest first",
)
async def list_keys(
    tenant_id: str,
    tenants: TenantServiceDep,
    limit: Limit = DEFAULT_PAGE,
    cursor: Annotated[str | None, KEY_CURSOR.query()] = None,
) -> KeyList:
    return await tenants.list_keys(tenant_id, limit=limit, cursor=cursor)


@router.post(
    "/keys/{key_id}/rotate",
    response_model=NewKeyOut,
    responses=_errors(400, 409),
    summary="Rotate a key: a new key now (shown this once), the old one until the grace period ends",
)
async def rotate_key(key_id: str, tenants: TenantServiceDep, body: KeyRotate | None = None) -> NewKeyOut:
    """The new key has the old one's tenant, name and scopes (`rotated_from_id` names the old one) and works at
    once; the old key is refused (401) after `grace_seconds` (default 3600). 409 when the old key is already
    revoked (`key_revoked`) or expired (`key_expired`)."""
    grace = body.grace_seconds if body is not None else DEFAULT_GRACE_S
    return await tenants.rotate_key(key_id, grace, actor=ACTOR_ADMIN_TOKEN)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke a key (refused from now on)")
async def revoke_key(key_id: str, tenants: TenantServiceDep) -> KeyOut:
    return await tenants.revoke_key(key_id, actor=ACTOR_ADMIN_TOKEN)
