"""SQL for the upstream key pool."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import UpstreamKey


async def get_by_fingerprint(session: AsyncSession, fingerprint: str) -> UpstreamKey | None:
    stmt = select(UpstreamKey).where(UpstreamKey.fingerprint == fingerprint)
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert(session: AsyncSession, key: UpstreamKey) -> None:
    session.add(key)
    await session.flush()


async def list_active(session: AsyncSession) -> Sequence[UpstreamKey]:
    stmt = select(UpstreamKey).where(UpstreamKey.status == "active").order_by(UpstreamKey.created_at)
    return (await session.execute(stmt)).scalars().all()
