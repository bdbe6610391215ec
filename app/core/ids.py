"""Opaque, time-sortable identifiers (48-bit millisecond clock + 80 random bits, hex)."""

from __future__ import annotations

import re
import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


# Every id the gateway mints (`task_img_` + hex) fits this, and so does the String(48) column; any other id names no
# task. Answering those without a query keeps what PostgreSQL refuses in a text parameter (NUL, lone surrogates)
# away from it, so `%00` is the same plain 404 on every database.
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,48}")


def is_task_id(text: str) -> bool:
    """Whether `text` can be a task id the gateway issued (else it names no task)."""
    return _TASK_ID.fullmatch(text) is not None
