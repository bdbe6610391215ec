"""SQL for tenants and tenant keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Tenant, TenantKey, TenantStatus


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


async def get_key(session: AsyncSession, key_id: str, *, for_update: bool = False) -> tuple[TenantKey, Tenant] | None:
    """A key and its tenant (the key's row locked when asked)."""
    stmt = select(TenantKey, Tenant).join(Tenant, TenantKey.tenant_id == Tenant.id).where(TenantKey.id == key_id)
    if for_update:
        stmt = stmt.with_for_update(of=TenantKey)
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1])


async def find_usable_key(
    session: AsyncSession, key_hashes: Sequence[str], now: dt.datetime
) -> tuple[TenantKey, Tenant] | None:
    """The unrevoked, unexpired key whose hash is one of `key_hashes`, with its tenant if that tenant is active."""
    stmt = (
        select(TenantKey, Tenant)
        .join(Tenant, TenantKey.tenant_id == Tenant.id)
        .where(
            TenantKey.key_hash.in_(list(key_hashes)),
            TenantKey.revoked_at.is_(None),
            or_(TenantKey.expires_at.is_(None), TenantKey.expires_at > now),
            Tenant.status == TenantStatus.ACTIVE,
        )
        .limit(1)
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1])


async def find_usable_key_by_id(
    session: AsyncSession, key_id: str, now: dt.datetime
) -> tuple[TenantKey, Tenant] | None:
    """The key with this id if it is unrevoked and unexpired, with its tenant if that tenant is active (the key an
    end-user token names as its minter)."""
    stmt = (
        select(TenantKey, Tenant)
        .join(Tenant, TenantKey.tenant_id == Tenant.id)
        .where(
            TenantKey.id == key_id,
            TenantKey.revoked_at.is_(None),
            or_(TenantKey.expires_at.is_(None), TenantKey.expires_at > now),
            Tenant.status == TenantStatus.ACTIVE,
        )
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1])


async def newest_minting_key(session: AsyncSession, tenant_id: str, now: dt.datetime) -> TenantKey | None:
    """The tenant's newest unrevoked, unexpired key with the `mint` scope."""
    stmt = (
        select(TenantKey)
        .where(
            TenantKey.tenant_id == tenant_id,
            TenantKey.revoked_at.is_(None),
            or_(TenantKey.expires_at.is_(None), TenantKey.expires_at > now),
        )
        .order_by(TenantKey.created_at.desc(), TenantKey.id.desc())
    )
    for key in (await session.execute(stmt)).scalars():
        if "mint" in key.scopes.split(","):
            return key
    return None


async def tenant_cors_origins(session: AsyncSession) -> list[list[str]]:
    """Every active tenant's own browser origins (tenants that have some)."""
    stmt = select(Tenant.cors_origins).where(Tenant.cors_origins.is_not(None), Tenant.status == TenantStatus.ACTIVE)
    return [list(origins or []) for origins in (await session.execute(stmt)).scalars()]


async def rekey(session: AsyncSession, key_id: str, *, old_hash: str, new_hash: str, hash_key_id: str) -> bool:
    """Store the key's hash under the current secret, unless another request did it first."""
    stmt = (
        update(TenantKey)
        .where(TenantKey.id == key_id, TenantKey.key_hash == old_hash)
        .values(key_hash=new_hash, hash_key_id=hash_key_id)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


_KEYS = cast(Table, TenantKey.__table__)
_LAST_USED = (
    update(_KEYS)
    .where(
        _KEYS.c.id == bindparam("b_id"),
        or_(_KEYS.c.last_used_at.is_(None), _KEYS.c.last_used_at < bindparam("b_used")),
    )
    .values(last_used_at=bindparam("b_used"))
)


async def set_last_used(session: AsyncSession, uses: Mapping[str, dt.datetime]) -> None:
    """One UPDATE (executemany) for a batch of keys' last use; a stored later use is kept."""
    if uses:
        await session.execute(_LAST_USED, [{"b_id": key_id, "b_used": at} for key_id, at in uses.items()])


async def page_tenants(
    session: AsyncSession, *, limit: int, after_id: str | None, name_contains: str | None = None
) -> Sequence[Tenant]:
    """Tenants in id order after `after_id`, deleted ones left out (they are gone from the ops surface); with
    `name_contains`, only those whose name holds it (case-insensitively)."""
    stmt = select(Tenant).where(Tenant.status != TenantStatus.DELETED).order_by(Tenant.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(Tenant.id > after_id)
    if name_contains:
        stmt = stmt.where(Tenant.name.icontains(name_contains, autoescape=True))
    return (await session.execute(stmt)).scalars().all()


async def count_keys_not_under(session: AsyncSession, hash_key_id: str, now: dt.datetime) -> int:
    """Usable keys (not revoked, not expired) whose hash was made with another secret than `hash_key_id`."""
    stmt = (
        select(func.count())
        .select_from(TenantKey)
        .where(
            TenantKey.hash_key_id != hash_key_id,
            TenantKey.revoked_at.is_(None),
            or_(TenantKey.expires_at.is_(None), TenantKey.expires_at > now),
        )
    )
    return int((await session.execute(stmt)).scalar_one())


async def page_keys(session: AsyncSession, tenant_id: str, *, limit: int, after_id: str | None) -> Sequence[TenantKey]:
    stmt = select(TenantKey).where(TenantKey.tenant_id == tenant_id).order_by(TenantKey.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(TenantKey.id > after_id)
    return (await session.execute(stmt)).scalars().all()
