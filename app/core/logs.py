"""Logging of every process the project starts: the command line's, and each `serve --workers N` worker's.

Two formats (GATEWAY_LOG_FORMAT): `text`, one readable line per record, and `json`, one JSON object per line with
time, level, logger, message, the request's id, tenant and task when known, and the access line's route, status and
duration. Either way every record passes `RequestContextFilter`, which copies the current request's ids onto it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from app.core import context

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "app.access"  # one line per request (app/core/observe.py)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Extra fields a record may carry (`log.info(..., extra={...})`), copied into the JSON line when present.
_EXTRA_FIELDS = ("method", "path", "route", "status", "duration_ms")
_JSON_FIELDS = tuple((name, f',"{name}":') for name in ("request_id", "tenant_id", "task_id", *_EXTRA_FIELDS))
_quote: Callable[[str], str] = json.encoder.encode_basestring  # json's own escaping (its C version)


class RequestContextFilter(logging.Filter):
    """Puts request_id, tenant_id and task_id (None outside a request) on every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = context.current()
        if not hasattr(record, "request_id"):
            record.request_id = current.request_id if current is not None else None
        if not hasattr(record, "tenant_id"):
            record.tenant_id = current.tenant_id if current is not None else None
        if not hasattr(record, "task_id"):
            record.task_id = current.task_id if current is not None else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, written out field by field (json.dumps of a dict costs several times more, once per
    request for the access line); strings go through json's own escaping, so every line parses."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the part up to the second is formatted once per second."""
        second = int(created)
        if second != self._second:
            self._second_text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            '{"time":"',
            self._time(record.created),
            '","level":"',
            record.levelname,
            '","logger":',
            _quote(record.name),
            ',"message":',
            _quote(record.getMessage()),
        ]
        fields = record.__dict__
        for name, key in _JSON_FIELDS:
            value = fields.get(name)
            if value is None:
                continue
            kind = type(value)
            if kind is str:
                parts += (key, _quote(value))
            elif kind is int:
                parts += (key, int.__repr__(value))
            else:
                parts += (key, json_value(value))
        if record.exc_info:
            parts.append(',"exception":')
            parts.append(_quote(self.formatException(record.exc_info)))
        parts.append("}")
        return "".join(parts)


def json_value(value: object) -> str:
    """`value` as json.dumps(value, ensure_ascii=False, default=str) writes it, the common types without its
    machinery."""
    if isinstance(value, str):
        return _quote(value)
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """One readable line; a record written while a request is served ends with its request id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own `2026-11-28 13:00:00,123`, with the part up to the second formatted once per second."""
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            text = super().format(record)
        else:  # TEXT_FORMAT, written out: logging's %-style formatting of a dict costs more, once per access line
            record.message = record.getMessage()
            text = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.message}"
        request_id = getattr(record, "request_id", None)
        return f"{text} request_id={request_id}" if request_id is not None else text


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, block-buffered, so that one access line per request does not cost a system call each.

    Access lines (logger `app.access`) written by the event loop's thread are flushed once the loop has run what is
    ready now (call_soon): a busy loop writes the lines of many requests at once, an idle one each line at once.
    Every other record is flushed at once, with whatever access lines precede it (uvicorn's shutdown lines, say, so
    a process that ends on a re-raised SIGTERM has written everything).
    """

    def __init__(self) -> None:
        try:  # stderr's file descriptor, block-buffered (the stream outlives the handler: closefd=False)
            raw = open(sys.stderr.fileno(), "wb", buffering=1 << 16, closefd=False)  # noqa: SIM115
            stream: Any = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace")
        except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (captured): written as is
            stream = sys.stderr
        super().__init__(stream)
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if record.name == ACCESS_LOGGER and record.levelno < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                if self._flush_on is not loop:
                    self._flush_on = loop
                    loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        self._flush_on = None
        super().flush()


def setup_logging(level: str, log_format: str = "text") -> None:
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(BatchingStreamHandler())
    root.setLevel(level.upper())
    for handler in root.handlers:
        handler.setFormatter(formatter(log_format))
        if not any(isinstance(f, RequestContextFilter) for f in handler.filters):
            handler.addFilter(RequestContextFilter())
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # Neither format shows them; each costs a lookup on every record (one access line per request).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
