"""The two log formats, written out by hand for speed (one access line per request): the JSON line must say exactly
what json.dumps would, whatever a field holds, and the text line what logging's own format string would."""

from __future__ import annotations

import enum
import json
import logging
import math
import sys
from typing import Any

import pytest

from app.core.logs import TEXT_FORMAT, JsonFormatter, TextFormatter


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
    expected = json.loads(json.dumps(value, ensure_ascii=False, default=str))
    assert parsed["path"] == parsed["status"] == parsed["duration_ms"] == expected
    assert parsed["request_id"] == "req-1"
    assert "\n" not in line


def test_the_json_line_has_the_fixed_fields_first_and_omits_what_is_unknown() -> None:
    line = JsonFormatter().format(record(request_id="r", tenant_id=None, task_id="task_1", status=200))
    parsed = json.loads(line)
    assert list(parsed) == ["time", "level", "logger", "message", "request_id", "task_id", "status"]
    assert parsed["time"] == "2026-09-21T14:13:20.250Z"
    assert (parsed["level"], parsed["logger"], parsed["message"]) == ("INFO", "app.access", "GET /x 200")


def test_non_finite_floats_are_written_as_json_dumps_writes_them() -> None:
    parsed = JsonFormatter().format(record(duration_ms=math.inf))
    assert '"duration_ms":Infinity' in parsed


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
