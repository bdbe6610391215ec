"""The one clock of the app, injectable in tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def to_unix(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def from_unix(value: int | float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)
