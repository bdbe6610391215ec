"""Quota counters, the ledger entries they account for, and rate-limit windows."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime
from app.models.task import END_USER_MAX_CHARS

INFLIGHT_PERIOD = "inflight"
# A period or a window kind may name an end user (`user:2026-11-25:<end user>`, `submit@<end user>`), up to 128
# characters of it.
PERIOD_MAX_CHARS = 160


class QuotaCounter(Base):
    """One tenant's running total for a period (`day:2026-11-25`, `month:2026-11`) or its tasks in flight, or one
    of its end users' images of a day (`user:2026-11-25:<end user>`, counted inside the tenant's).

    Always equal to the sum of its entries; only ever changed by one conditional statement in the transaction
    that writes the entry.
    """

    __tablename__ = "quota_counters"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(PERIOD_MAX_CHARS), primary_key=True)
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
    # The end user whose token made the task: its images count in that end user's day too (NULL: a tenant key).
    end_user: Mapped[str | None] = mapped_column(String(END_USER_MAX_CHARS), default=None)


class RateWindow(Base):
    """Requests of one kind (`submit`, `query`, or one end user's submits: `submit@<end user>`) counted in one fixed
    one-minute window."""

    __tablename__ = "rate_windows"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(PERIOD_MAX_CHARS), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
