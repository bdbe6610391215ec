"""SQL for tenants and tenant keys."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Tenant, TenantKey


async def insert_tenant(session: AsyncSession, tenant: Tenant) -> None:
    session.add(tenant)
    await session.flush()


async def insert_key(session: AsyncSession, key: TenantKey) -> None:
    session.add(key)
    await session.flush()


async def get_by_name(session: AsyncSession, name: str) -> Tenant | None:
    return (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one_or_none()


async def get(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id)


async def find_active_by_key_hash(session: AsyncSession, key_hash: str, now: dt.datetime) -> Tenant | None:
    """The active tenant owning an unrevoked, unexpired key with this hash."""
    stmt = (
        select(Tenant)
        .join(TenantKey, TenantKey.tenant_id == Tenant.id)
        .where(
            TenantKey.key_hash == key_hash,
            TenantKey.revoked_at.is_(None),
            or_(TenantKey.expires_at.is_(None), TenantKey.expires_at > now),
            Tenant.status == "active",
        )
    )
    return (await session.execute(stmt)).scalar_one_or_none()
