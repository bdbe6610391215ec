"""Tenant rules: creation with a first key, authentication by key."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, Unauthorized
from app.ids import new_id
from app.models import Tenant, TenantKey
from app.repositories import tenants as repo
from app.security import KeyMaterial, new_tenant_key


async def create_tenant(
    session: AsyncSession, keys: KeyMaterial, name: str, now: dt.datetime, *, key: str | None = None
) -> tuple[Tenant, str]:
    """Create a tenant and its first key; the plaintext key is returned once and never stored."""
    name = name.strip()
    if not name:
        raise Conflict("Tenant name must not be empty", param="name")
    if await repo.get_by_name(session, name) is not None:
        raise Conflict(f"A tenant named '{name}' already exists", param="name")
    tenant = Tenant(id=new_id("ten_"), name=name, status="active", created_at=now, updated_at=now)
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


async def authenticate(
    session: AsyncSession, keys: KeyMaterial, authorization: str | None, now: dt.datetime
) -> Tenant:
    """The tenant of a `Bearer <key>` header, or Unauthorized in the upstream's shape."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    tenant = await repo.find_active_by_key_hash(session, keys.hash_tenant_key(token), now)
    if tenant is None:
        raise Unauthorized("Invalid API key")
    return tenant
