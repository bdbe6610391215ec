"""The two log formats, written out by hand for speed (one access line per request): the JSON line must say exactly
what json.dumps would, whatever a field holds, and the text line what logging's own format string would."""

from __future__ import annotations

import asyncio
import enum
import io
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from app.core.logs import (
    ACCESS_FLUSH_S,
    ACCESS_LOGGER,
    PIPE_BUF,
    TEXT_FORMAT,
    AccessLine,
    BatchingStreamHandler,
    JsonFormatter,
    RequestContextFilter,
    TextFormatter,
    _is_pipe,
    direct_access,
)
from app.core.observe import access_record


class Colour(enum.StrEnum):
    RED = "red"


def record(message: str = "GET %s %s", args: tuple[Any, ...] = ("/x", 200), **fields: Any) -> logging.LogRecord:
    made = logging.LogRecord("app.access", logging.INFO, __file__, 1, message, args, None)
    made.created = 1_790_000_000.25
    made.msecs = 250.0
    for name, value in fields.items():
        setattr(made, name, value)
    return made


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'quotes " and \\ backslash',
        "line\nbreak\ttab \x00 nul",
        "unicode: é 雪 \U0001f98a",
        0,
        -17,
        2**70,
        0.1,
        1e-7,
        12.0,
        True,
        False,
        Colour.RED,
        ["a", 1],
        {"k": "v"},
        object(),
    ],
    ids=lambda value: type(value).__name__,  # never repr: object()'s differs between xdist workers
)
def test_every_field_value_reads_back_as_json_dumps_wrote_it(value: Any) -> None:
    line = JsonFormatter().format(record(request_id="req-1", path=value, status=value, duration_ms=value))
    parsed = json.loads(line)
    expected = json.loads(json.dumps(value, ensure_ascii=False, default=str))  # the reference
    assert parsed["path"] == parsed["status"] == parsed["duration_ms"] == expected
    assert parsed["request_id"] == "req-1"
    assert "\n" not in line


def test_the_json_line_has_the_fixed_fields_first_and_omits_what_is_unknown() -> None:
    line = JsonFormatter().format(record(request_id="r", tenant_id=None, task_id="task_1", status=200))
    parsed = json.loads(line)
    assert list(parsed) == ["time", "level", "logger", "message", "request_id", "task_id", "status"]
    assert parsed["time"] == "2026-09-21T14:13:20.250Z"
    assert (parsed["level"], parsed["logger"], parsed["message"]) == ("INFO", "app.access", "GET /x 200")


def test_non_finite_floats_are_null_so_that_every_line_is_valid_json() -> None:
    line = JsonFormatter().format(record(duration_ms=math.inf, status=math.nan))
    assert json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["duration_ms"] is None


def test_an_exception_is_one_escaped_field() -> None:
    try:
        raise ValueError('bad "value"\nsecond line')
    except ValueError:
        failing = record(exc_info=sys.exc_info())
    parsed = json.loads(JsonFormatter().format(failing))
    assert parsed["exception"].startswith("Traceback") and 'bad "value"\nsecond line' in parsed["exception"]


def test_the_text_line_is_logging_s_own_format_with_the_request_id() -> None:
    ours = TextFormatter()
    plain = record(request_id="req-9")
    reference = logging.Formatter(TEXT_FORMAT)
    reference.formatTime = ours.formatTime  # type: ignore[method-assign]  # the same clock text on both sides
    assert ours.format(plain) == reference.format(record()) + " request_id=req-9"
    assert ours.format(record()) == reference.format(record())


def test_the_text_line_keeps_logging_s_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failing = record(exc_info=sys.exc_info())
    text = TextFormatter().format(failing)
    assert text.splitlines()[0].endswith("app.access: GET /x 200")
    assert "Traceback" in text and text.rstrip().endswith("ValueError: boom")


# --- the access line, written without a LogRecord (app/core/observe.py) -------------------------------------------

ACCESS = AccessLine(
    created=1_790_000_000.257,
    method="GET",
    path='/v1/images/generations/task "é" \\ x',
    route="/v1/images/generations/{task_id}",
    status=200,
    duration_ms=0.25,
    request_id='req"1\\',
    tenant_id="ten_1",
    task_id='task "é"',
)


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
@pytest.mark.parametrize("tenant_id", ["ten_1", None])
def test_the_direct_access_line_is_the_formatted_record(
    formatter: type[logging.Formatter], tenant_id: str | None
) -> None:
    line = ACCESS._replace(tenant_id=tenant_id)
    made = formatter()
    assert made.access_line(line) == formatter().format(access_record(line))  # type: ignore[attr-defined]


class Capture:
    """A file descriptor whose writes are kept (a temporary file: a pipe nobody reads would fill up and block)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by text()
        self.write_fd = self.file.fileno()

    def text(self) -> str:
        self.file.seek(0)
        try:
            return self.file.read().decode()
        finally:
            self.file.close()


@pytest.fixture
def handler() -> Iterator[tuple[BatchingStreamHandler, Capture, list[int]]]:
    capture = Capture()
    made = BatchingStreamHandler(capture.write_fd, piped=True)  # as on a container's stderr
    made.setFormatter(TextFormatter())
    sizes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: Any) -> int:
        if fd == capture.write_fd:
            sizes.append(len(data))
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", counting_write)
        yield made, capture, sizes


def test_access_lines_wait_for_the_timer_and_other_records_take_them_along(
    handler: tuple[BatchingStreamHandler, Capture, list[int]],
) -> None:
    made, capture, sizes = handler

    async def scenario() -> None:
        made.write_access(ACCESS)
        made.write_access(ACCESS._replace(status=404))
        assert sizes == []  # waiting in memory
        other = record("shutting down", ())
        other.name = "uvicorn.error"
        made.handle(other)  # any other record: written at once, after the waiting lines
        assert len(sizes) == 1
        made.write_access(ACCESS._replace(status=500))
        await asyncio.sleep(ACCESS_FLUSH_S * 3)
        assert len(sizes) == 2  # the timer wrote it

    asyncio.run(scenario())
    lines = capture.text().splitlines()
    assert [line.split(" ")[-3] for line in lines if "request_id=" in line] == ["200", "404", "500"]
    assert "shutting down" in lines[2]


def test_batches_are_whole_lines_of_at_most_pipe_buf_bytes(
    handler: tuple[BatchingStreamHandler, Capture, list[int]],
) -> None:
    made, capture, sizes = handler
    made.setFormatter(JsonFormatter())

    async def scenario() -> None:
        for status in range(100, 400):
            made.write_access(ACCESS._replace(status=status))
        made.flush()

    asyncio.run(scenario())
    text = capture.text()
    parsed = [json.loads(line) for line in text.splitlines()]
    assert [p["status"] for p in parsed] == list(range(100, 400))
    assert len(sizes) > 1 and max(sizes) <= PIPE_BUF
    # every write ended at a line's end: the written pieces, cut at their sizes, each end with a newline
    data, offset = text.encode(), 0
    for size in sizes:
        offset += size
        assert data[offset - 1 : offset] == b"\n"


def test_direct_access_only_while_logging_is_the_gateway_s_own() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    ours = BatchingStreamHandler()
    ours.addFilter(RequestContextFilter())
    try:
        root.handlers[:] = [ours]
        root.setLevel(logging.INFO)
        assert direct_access() is ours
        other = logging.StreamHandler(io.StringIO())
        root.addHandler(other)  # a capture, or an embedding app's handler: it must see the lines
        assert direct_access() is None
        root.removeHandler(other)
        logging.getLogger(ACCESS_LOGGER).addFilter(logging.Filter("nothing"))
        assert direct_access() is None
        logging.getLogger(ACCESS_LOGGER).filters.clear()
        root.setLevel(logging.WARNING)  # access lines off
        assert direct_access() is None
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger(ACCESS_LOGGER).filters.clear()


def test_pipes_are_told_from_files() -> None:
    read_fd, write_fd = os.pipe()
    try:
        assert _is_pipe(write_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    with tempfile.TemporaryFile() as file:
        assert not _is_pipe(file.fileno())
