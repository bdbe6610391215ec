"""What a database failure means for the caller, and how it may be logged.

`is_database_unavailable` tells an outage (the server down or unreachable, the database dropped, no pooled connection
in time) from a bug: an outage is answered 503 `database_unavailable` with `Retry-After`, logged once per outage
(app/core/outage.py), never with a traceback per request.

The engine hides statement parameters (`hide_parameters=True`), but PostgreSQL and asyncpg echo values in their
own messages (`DETAIL: Key (key_hash)=(...) already exists`, `invalid input for query argument $1: '...'`):
`redact_in_place` (the engine's `handle_error` hook) removes them from every exception of a failed statement, and
`redacted_traceback` formats an unexpected error through the same filter, whatever raised it.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator

from sqlalchemy import exc as sa_exc

from app.core.errors import GatewayError

RETRY_AFTER_S = 2

# SQLSTATE classes of a server that cannot serve now: 08 connection exception, 53 insufficient resources (too many
# connections, disk full, out of memory), 57 operator intervention (shutdown, crash recovery, "cannot connect now",
# database dropped), and 3D000: the database does not exist (dropped). 57014 is a cancelled statement, not an outage.
_PG_UNAVAILABLE_CLASSES = ("08", "53", "57")
_PG_UNAVAILABLE_STATES = frozenset({"3D000"})
_PG_NOT_UNAVAILABLE = frozenset({"57014"})
_DRIVER_MODULES = ("sqlalchemy.", "asyncpg")
_MAX_CHAIN = 16


class DatabaseUnavailable(GatewayError):
    status_code = 503
    code = "database_unavailable"
    type = "api_error"

    def __init__(self, message: str = "The database is unavailable; retry in a few seconds.") -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_S)})


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be used right now (as opposed to a bug or a refused statement)."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_database_unavailable(e) for e in exc.exceptions)
    operational = False
    for e in _chain(exc):
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, sa_exc.TimeoutError):  # no pooled connection within pool_timeout
            return True
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            if sqlstate in _PG_NOT_UNAVAILABLE:
                return False
            return sqlstate in _PG_UNAVAILABLE_STATES or sqlstate[:2] in _PG_UNAVAILABLE_CLASSES
        if isinstance(e, sa_exc.OperationalError):
            operational = True  # decided by the driver's code when there is one further down the chain
        elif isinstance(e, OSError) and _raised_by_driver(e):
            return True  # connect: refused, reset, timed out, unknown host (asyncpg raises these unwrapped)
    return operational


def describe(exc: BaseException) -> str:
    """One redacted line naming the root cause (the driver's error rather than SQLAlchemy's wrapper)."""
    root = exc
    for e in _chain(exc):
        root = e
    message = redact(str(root)).strip().splitlines()
    return f"{type(root).__name__}: {message[0]}" if message else type(root).__name__


# What PostgreSQL and asyncpg echo of the values in their messages: `DETAIL: Key (key_hash)=(...) already exists`,
# `Failing row contains (...)`, `invalid input syntax for type integer: "..."`, `invalid input for query argument
# $1: '...'` (asyncpg, before anything is sent).
_KEY_VALUES = re.compile(r"(Key \([^)\n]*\)=)\([^\n]*\)")
_FAILING_ROW = re.compile(r"(Failing row contains )\([^\n]*\)")
_INVALID_INPUT = re.compile(r"(invalid input [^:\n]*:)[^\n]*")


def redact(message: str) -> str:
    """A database error message without the values PostgreSQL or asyncpg echo in it."""
    message = _KEY_VALUES.sub(r"\1(<redacted>)", message)
    message = _FAILING_ROW.sub(r"\1(<redacted>)", message)
    return _INVALID_INPUT.sub(r"\1 <redacted>", message)


def redact_in_place(exc: BaseException) -> None:
    """Redact the messages of `exc` and of what it wraps, so whoever logs it (with its chain) logs no values.

    Used by the engine's `handle_error` hook: SQLAlchemy's wrapper keeps the driver's message in `args[0]`, asyncpg
    adds the server's `detail` and `hint` when printing its own errors."""
    for e in _chain(exc):
        if e.args and isinstance(e.args[0], str):
            redacted = redact(e.args[0])
            if redacted != e.args[0]:
                e.args = (redacted, *e.args[1:])
        for attribute in ("detail", "hint"):
            value = getattr(e, attribute, None)
            if isinstance(value, str) and redact(value) != value:
                setattr(e, attribute, redact(value))


def redacted_traceback(exc: BaseException) -> str:
    """Like `traceback.format_exception(exc)`, with every message of the chain passed through `redact`."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < _MAX_CHAIN:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts: list[str] = []
    for inner, outer in zip(reversed(chain), [*reversed(chain[:-1]), None], strict=True):
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(inner.__traceback__))
        name = type(inner).__qualname__
        module = type(inner).__module__
        qualified = name if module in ("builtins", "__main__") else f"{module}.{name}"
        message = redact(str(inner)).rstrip()
        parts.append(f"{qualified}: {message}\n" if message else f"{qualified}\n")
        if outer is not None:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if outer.__cause__ is inner
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
    return "".join(parts).rstrip("\n")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: SQLAlchemy's `orig`, then causes and contexts, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < _MAX_CHAIN:
        seen.append(current)
        yield current
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        if isinstance(orig, BaseException) and orig not in seen:
            current = orig
        else:
            current = current.__cause__ or current.__context__


def _raised_by_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.startswith(_DRIVER_MODULES):
            return True
        tb = tb.tb_next
    return False
