"""Logging of every process the project starts: the command line's, and each `serve --workers N` worker's.

Two formats (GATEWAY_LOG_FORMAT): `text`, one readable line per record, and `json`, one JSON object per line with
time, level, logger, message, the request's id, tenant and task when known, and the access line's route, status and
duration. Either way every record passes `RequestContextFilter`, which copies the current request's ids onto it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from app.core import context

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "app.access"  # one line per request (app/core/observe.py)
QUIET_BELOW_DEBUG = ("httpx", "httpcore")  # HTTP client loggers heard at log level debug only
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Extra fields a record may carry (`log.info(..., extra={...})`), copied into the JSON line when present.
_EXTRA_FIELDS = ("method", "path", "route", "status", "duration_ms")
_JSON_FIELDS = ("request_id", "tenant_id", "task_id", *_EXTRA_FIELDS)
ACCESS_FLUSH_S = 0.2  # the longest an access line waits in memory before it is written
PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is not interleaved with another's
# Access lines written at once when this much waits: on a pipe or socket, what fits one atomic write (with room for
# multi-byte characters); on a file or terminal, where each write system call costs more than its bytes, more.
_PIPE_BATCH_CHARS = 3000
_FILE_BATCH_CHARS = 60_000
_access = logging.getLogger(ACCESS_LOGGER)


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


class _ClockText:
    """A formatter's time text, made once per millisecond (a busy worker writes several lines in one): the part up
    to the second by `up_to_second`, then the separator, the milliseconds and the suffix."""

    def __init__(self, up_to_second: Callable[[int], str], separator: str, suffix: str = "") -> None:
        self._up_to_second = up_to_second
        self._separator = separator
        self._suffix = suffix
        self._second = -1
        self._second_text = ""
        self._millisecond = -1
        self._text = ""

    def text(self, created: float) -> str:
        millisecond = int(created * 1000)
        if millisecond != self._millisecond:
            second, fraction = divmod(millisecond, 1000)
            if second != self._second:
                self._second_text = self._up_to_second(second)
                self._second = second
            self._text = f"{self._second_text}{self._separator}{fraction:03d}{self._suffix}"
            self._millisecond = millisecond
        return self._text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, serialised by orjson (several times faster than json.dumps: this runs once per
    request for the access line). Non-finite floats are written as null, anything orjson does not know as its str()."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _ClockText(
            lambda second: dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"), ".", "Z"
        )

    def _time(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds."""
        return self._clock.text(created)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in _JSON_FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return dumps(line)

    def access_line(self, line: AccessLine) -> str:
        """What `format` writes for the access record of `line`, without the record. The path is in the message
        only (the route and the task id are fields of their own)."""
        created, method, path, route, status, duration_ms, request_id, tenant_id, task_id = line
        fields: dict[str, Any] = {
            "time": self._time(created),
            "level": "INFO",
            "logger": ACCESS_LOGGER,
            "message": f"{method} {path} {status} {duration_ms:.2f}ms",
            "request_id": request_id,
        }
        if tenant_id is not None:
            fields["tenant_id"] = tenant_id
        if task_id is not None:
            fields["task_id"] = task_id
        fields["method"] = method
        fields["route"] = route
        fields["status"] = status
        fields["duration_ms"] = duration_ms
        return dumps(fields)


def dumps(fields: dict[str, Any]) -> str:
    """One JSON line: orjson, or json for what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(fields, default=str).decode()
    except orjson.JSONEncodeError:
        return json.dumps(fields, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """One readable line; a record written while a request is served ends with its request id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._clock = _ClockText(lambda second: time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)), ",")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own `2026-11-28 13:00:00,123`."""
        return self._clock.text(record.created)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            text = super().format(record)
        else:  # TEXT_FORMAT, written out: logging's %-style formatting of a dict costs more, once per access line
            record.message = record.getMessage()
            text = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.message}"
        request_id = getattr(record, "request_id", None)
        return f"{text} request_id={request_id}" if request_id is not None else text

    def access_line(self, line: AccessLine) -> str:
        """What `format` writes for the access record of `line`, without the record."""
        return (
            f"{self._clock.text(line.created)} INFO {ACCESS_LOGGER}: "
            f"{line.method} {line.path} {line.status} {line.duration_ms:.2f}ms request_id={line.request_id}"
        )


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class AccessLine(NamedTuple):
    """The fields of one access line (app/core/observe.py)."""

    created: float  # time.time()
    method: str
    path: str
    route: str
    status: int
    duration_ms: float
    request_id: str
    tenant_id: str | None
    task_id: str | None


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, written in batches, so that one access line per request does not cost a system call each.

    - Access lines wait in memory for at most ACCESS_FLUSH_S (or until a batch is about PIPE_BUF bytes); every other
      record is written at once, after whatever access lines precede it (uvicorn's shutdown lines, say, so a
      process that ends on a re-raised SIGTERM has written everything; logging's exit hook flushes the rest).
    - On a pipe or socket (a container's stderr), each write is whole lines of at most PIPE_BUF bytes where lines
      allow: writes that small are atomic on a pipe, so the lines of several `serve --workers` processes sharing one
      stderr never interleave mid-line. On a file, batches are larger (a write system call costs more than its bytes).
    - `write_access` takes an access line without a LogRecord (app/core/observe.py uses it while the process's
      logging is this handler alone: `direct_access`), a few microseconds less per request than logging's machinery.
    """

    def __init__(self, fd: int | None = None, *, piped: bool | None = None) -> None:
        """`fd`: where to write (default: stderr's descriptor); `piped`: whether it is a pipe or socket (default:
        asked of the descriptor)."""
        super().__init__(sys.stderr)
        if fd is None:
            try:
                fd = sys.stderr.fileno()
            except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (captured): written as is
                fd = None
        self._fd = fd
        if piped is None:
            piped = fd is None or _is_pipe(fd)
        self._batch_chars = _PIPE_BATCH_CHARS if piped else _FILE_BATCH_CHARS
        self._chunk_bytes = PIPE_BUF if piped else 1 << 20
        self._pending: list[str] = []
        self._pending_chars = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._add(line, later=record.name == ACCESS_LOGGER and record.levelno < logging.WARNING)

    def write_access(self, line: AccessLine) -> None:
        formatter = self.formatter
        if isinstance(formatter, (JsonFormatter, TextFormatter)):
            text = formatter.access_line(line)
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self._add(text, later=True)

    def _add(self, line: str, *, later: bool) -> None:
        """Called with the lock held."""
        self._pending.append(line)
        self._pending_chars += len(line) + 1
        if later and self._pending_chars < self._batch_chars:
            if self._timer is None:
                try:
                    self._timer = asyncio.get_running_loop().call_later(ACCESS_FLUSH_S, self.flush)
                except RuntimeError:  # no event loop in this thread: nothing would flush it later
                    self.flush()
            return
        self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._pending:
                return
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            self._pending_chars = 0
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            if self._fd is None:
                self.stream.write(text)
                self.stream.flush()
            else:
                _write_lines(self._fd, text.encode("utf-8", "backslashreplace"), self._chunk_bytes)
        except Exception:  # stderr gone (closed pipe): nothing else can be told
            pass


def _write_lines(fd: int, data: bytes, chunk: int) -> None:
    """Write `data` in chunks of whole lines of at most `chunk` bytes (a longer line goes alone)."""
    view = memoryview(data)
    start = 0
    while start < len(data):
        end = len(data)
        if end - start > chunk:
            cut = data.rfind(b"\n", start, start + chunk)
            end = cut + 1 if cut >= start else data.find(b"\n", start + chunk) + 1 or len(data)
        while start < end:
            start += os.write(fd, view[start:end])


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True  # the careful choice
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def direct_access() -> BatchingStreamHandler | None:
    """The handler access lines may be given to directly (skipping LogRecord, filters and logging's lock): when the
    access logger is enabled for INFO and its records would reach that handler alone, unfiltered (no handler, filter
    or stop on the way). Otherwise None: the line goes through logging (a test's capture, an embedding app's own
    handlers)."""
    if not _access.isEnabledFor(logging.INFO):
        return None
    logger: logging.Logger | None = _access
    while logger is not None:
        if logger.filters:
            return None
        if logger.parent is None:  # the root
            handlers = logger.handlers
            if len(handlers) == 1 and isinstance(handlers[0], BatchingStreamHandler):
                handler = handlers[0]
                if handler.level <= logging.INFO and all(type(f) is RequestContextFilter for f in handler.filters):
                    return handler
            return None
        if logger.handlers or not logger.propagate:
            return None
        logger = logger.parent
    return None


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
    # httpx writes an INFO line per upstream call (two per task at least: the create and the poller's look), which
    # costs a log record each and buries the access lines; the gateway's own line per call (app/upstream/
    # instrumented.py) is DEBUG, and so is httpx's when the level is debug.
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in QUIET_BELOW_DEBUG:
        logging.getLogger(name).setLevel(quiet)
    # Neither format shows them; each costs a lookup on every record (one access line per request).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
