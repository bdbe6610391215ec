"""What a log line or an upstream call knows about the request it serves: one mutable record per request, in a
contextvar set by the outermost middleware (app/core/observe.py).

The record is mutable so that what inner code learns (the tenant, once the key is checked) is seen by the outer
middleware's access line too, and by tasks spawned during the request (they copy the context, not the record).
"""

from __future__ import annotations

import os
import random
from contextvars import ContextVar
from dataclasses import dataclass

MAX_REQUEST_ID_CHARS = 128
REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(slots=True)
class RequestContext:
    request_id: str
    tenant_id: str | None = None
    task_id: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("gateway_request", default=None)


def new_request_id() -> str:
    """32 hex digits. A correlation id, not a secret: drawn from a per-process generator seeded from the OS (one
    system call per id showed in profiles of the status path), reseeded in a forked child."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def accepted_request_id(raw: bytes | None) -> str:
    """The caller's X-Request-ID when it is 1-128 printable ASCII characters, a new id otherwise."""
    if raw and len(raw) <= MAX_REQUEST_ID_CHARS and raw.isascii():
        value = raw.decode("ascii")
        if value.isprintable() and value.strip():
            return value
    return new_request_id()


def begin(request_id: str) -> RequestContext:
    context = RequestContext(request_id)
    _current.set(context)
    return context


def current() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None


def set_tenant(tenant_id: str) -> None:
    context = _current.get()
    if context is not None:
        context.tenant_id = tenant_id


def set_task(task_id: str) -> None:
    context = _current.get()
    if context is not None:
        context.task_id = task_id
