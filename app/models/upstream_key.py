"""The organisation's upstream API keys, encrypted at rest."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db.base import Base, UTCDateTime


# Stored as its string (no CHECK constraint), shared by every replica: the enum is the one list of them in the code.
class UpstreamKeyStatus(StrEnum):
    """Every status of an upstream key."""

    ACTIVE = "active"
    COOLING = "cooling"  # no new task until `cooling_until` (then it reads `active` again)
    DISABLED = "disabled"  # refused by the upstream (re-probed), or by an admin (until enabled)
    DRAINING = "draining"  # no new task; its open tasks finish
    RETIRED = "retired"  # unused, except to poll tasks still open on it


class UpstreamKey(Base):
    __tablename__ = "upstream_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # Which GATEWAY_SECRET_KEY encrypted it (security.KeyMaterial.key_id), for re-encryption after a rotation.
    enc_key_id: Mapped[str] = mapped_column(String(16), default="", server_default=text("''"))
    status: Mapped[str] = mapped_column(String(16), default=UpstreamKeyStatus.ACTIVE)  # an UpstreamKeyStatus value
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    max_in_flight: Mapped[int | None] = mapped_column(Integer, default=None)  # None = no cap
    in_flight: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cooling_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    last_probe_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
