"""Kept results (issue 23): one row per image of a completed task, copied from the upstream into the organisation's
store before the upstream's link expires, kept for the tenant's retention period, then deleted."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime


class KeptState(StrEnum):
    """What became of one result image."""

    PENDING = "pending"  # to be copied (again, after a failed attempt) until the upstream's link expires
    KEPT = "kept"  # in the store, published: callers are handed links to it
    LOST = "lost"  # the upstream's link expired before a copy succeeded: only the upstream's (dead) link remains
    DELETED = "deleted"  # its retention ended, or ops deleted the tenant's images: gone from the store


class KeptImage(Base):
    __tablename__ = "kept_images"
    __table_args__ = (
        # The copier's "what is due": pending rows by their next attempt (NULL once settled).
        Index("ix_kept_images_next_try_at", "next_try_at"),
        # The sweeper's "what has outlived its retention": kept (or pending) rows by their end (NULL once deleted).
        Index("ix_kept_images_keep_until", "keep_until"),
        Index("ix_kept_images_tenant_id_state", "tenant_id", "state"),
    )

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)  # the image's place in the task's result
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    upstream_url: Mapped[str] = mapped_column(Text)  # also in tasks.result_urls: the ledger keeps both
    state: Mapped[str] = mapped_column(String(16))  # a KeptState value
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_try_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    give_up_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())  # the upstream link's expiry
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    store_key: Mapped[str | None] = mapped_column(Text, default=None)  # where it is in the store, once kept
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)  # bytes, once kept
    content_type: Mapped[str | None] = mapped_column(String(64), default=None)
    completed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())  # the task's; retention counts from it
    keep_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)  # NULL once deleted
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    kept_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
