"""Opaque, time-sortable identifiers (48-bit millisecond clock + 80 random bits, hex)."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(10)}"
