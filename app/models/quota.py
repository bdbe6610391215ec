"""Quota counters, the ledger entries they account for, and rate-limit windows."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime

INFLIGHT_PERIOD = "inflight"


class QuotaCounter(Base):
    """One tenant's running total for a period (`day:2026-11-25`, `month:2026-11`) or its tasks in flight.

    Always equal to the sum of its entries; only ever changed by one conditional statement in the transaction
    that writes the entry.
    """

    __tablename__ = "quota_counters"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(24), primary_key=True)
    amount: Mapped[int] = mapped_column(Integer, default=0)


class QuotaEntry(Base):
    """One movement of a task's images: `reserve` (+n at submit) and `settle` (minus what was not produced)."""

    __tablename__ = "quota_entries"
    __table_args__ = (
        UniqueConstraint("task_id", "kind"),
        Index("ix_quota_entries_tenant_id_day", "tenant_id", "day"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    images: Mapped[int] = mapped_column(Integer)
    day: Mapped[str] = mapped_column(String(10))
    month: Mapped[str] = mapped_column(String(7))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class RateWindow(Base):
    """Requests of one kind (`submit`, `query`) counted in one fixed one-minute window."""

    __tablename__ = "rate_windows"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
