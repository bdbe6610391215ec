"""Logging of every process the project starts: the command line's, and each `serve --workers N` worker's.

Two formats (GATEWAY_LOG_FORMAT): `text`, one readable line per record, and `json`, one JSON object per line with
time, level, logger, message, the request's id, tenant and task when known, and the access line's route, status and
duration. Either way every record passes `RequestContextFilter`, which copies the current request's ids onto it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from app.core import context

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Extra fields a record may carry (`log.info(..., extra={...})`), copied into the JSON line when present.
_EXTRA_FIELDS = ("method", "path", "route", "status", "duration_ms")


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
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "tenant_id", "task_id", *_EXTRA_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """One readable line; a record written while a request is served ends with its request id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} request_id={request_id}" if request_id is not None else text


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def setup_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    root = logging.getLogger()
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
