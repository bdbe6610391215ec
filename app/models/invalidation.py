"""Change events every replica reads to drop what it cached (core/invalidation.py)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime


class InvalidationEvent(Base):
    """Written in the transaction that makes the change, so a change and its event commit together."""

    __tablename__ = "invalidation_events"
    __table_args__ = (Index("ix_invalidation_events_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(32))  # "tenant", "tenant_key", "upstream_key", "*"
    key: Mapped[str] = mapped_column(String(64), default="")  # the changed row's id; "" = every row of the topic
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
