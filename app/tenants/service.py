"""Tenant rules: creation with a first key, authentication by key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import LIMIT_NAMES
from app.core.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from app.core.ids import new_id
from app.core.security import KeyMaterial, new_tenant_key
from app.models import Tenant, TenantKey
from app.tenants import repository as repo


async def create_tenant(
    session: AsyncSession,
    keys: KeyMaterial,
    name: str,
    now: dt.datetime,
    *,
    key: str | None = None,
    limits: Mapping[str, int | None] | None = None,
) -> tuple[Tenant, str]:
    """Create a tenant (with the default limits) and its first key; the plaintext key is returned once only."""
    name = name.strip()
    if not name:
        raise Conflict("Tenant name must not be empty", param="name")
    if await repo.get_by_name(session, name) is not None:
        raise Conflict(f"A tenant named '{name}' already exists", param="name")
    tenant = Tenant(id=new_id("ten_"), name=name, status="active", created_at=now, updated_at=now, **dict(limits or {}))
    await repo.insert_tenant(session, tenant)
    plaintext = key or new_tenant_key()
    await repo.insert_key(
        session,
        TenantKey(
            id=new_id("key_"),
            tenant_id=tenant.id,
            key_hash=keys.hash_tenant_key(plaintext),
            prefix=plaintext[:10],
            created_at=now,
        ),
    )
    return tenant, plaintext


async def authenticate(session: AsyncSession, keys: KeyMaterial, authorization: str | None, now: dt.datetime) -> Tenant:
    """The tenant of a `Bearer <key>` header, or Unauthorized in the upstream's shape."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    tenant = await repo.find_active_by_key_hash(session, keys.hash_tenant_key(token), now)
    if tenant is None:
        raise Unauthorized("Invalid API key")
    return tenant


async def get_tenant(session: AsyncSession, tenant_ref: str) -> Tenant:
    """A tenant by id or by name, or 404."""
    tenant = await repo.get(session, tenant_ref) or await repo.get_by_name(session, tenant_ref)
    if tenant is None:
        raise NotFound(f"Tenant {tenant_ref!r} not found", code="tenant_not_found")
    return tenant


async def set_limits(
    session: AsyncSession, tenant_ref: str, changes: Mapping[str, int | None], now: dt.datetime
) -> Tenant:
    """Apply limit changes (None = unlimited; names not given stay as they are)."""
    tenant = await get_tenant(session, tenant_ref)
    unknown = set(changes) - set(LIMIT_NAMES)
    if unknown:
        raise InvalidRequest(f"Unknown limit(s): {', '.join(sorted(unknown))}")
    for name, value in changes.items():
        setattr(tenant, name, value)
    tenant.updated_at = now
    await session.flush()
    return tenant


def limits_of(tenant: Tenant) -> dict[str, int | None]:
    return {name: getattr(tenant, name) for name in LIMIT_NAMES}
