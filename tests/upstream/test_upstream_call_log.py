"""Upstream calls in the logs: one gateway line per call at log level debug (key id, operation, outcome, time, never
the key's secret), and httpx's own INFO line per call silenced unless the level is debug."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from app.core.errors import UpstreamTimeout
from app.core.logs import QUIET_BELOW_DEBUG, setup_logging
from app.upstream.base import UpstreamTask
from app.upstream.instrumented import InstrumentedAdapter

SECRET = "sk-upstream-secret-0123456789"


class Inner:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get(self, api_key: str, upstream_task_id: str) -> UpstreamTask:
        if self.fail:
            raise UpstreamTimeout("no answer")
        return UpstreamTask(id=upstream_task_id, status="in_progress", progress=10)  # type: ignore[arg-type]


def adapter(inner: Inner) -> InstrumentedAdapter:
    pool = SimpleNamespace(snapshot=lambda: [SimpleNamespace(id="key_a", secret=SECRET)])
    return InstrumentedAdapter(inner, pool)  # type: ignore[arg-type]


@pytest.fixture
def quiet_loggers() -> Iterator[None]:
    """The root logger and the HTTP client loggers as they were, whatever setup_logging does to them."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in QUIET_BELOW_DEBUG}
    try:
        yield
    finally:
        root.handlers[:], root.level, levels = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("level", "httpx_heard_at"), [("info", logging.WARNING), ("debug", logging.DEBUG)])
def test_httpx_lines_are_heard_at_debug_only(quiet_loggers: None, level: str, httpx_heard_at: int) -> None:
    logging.getLogger().handlers[:] = [logging.StreamHandler(io.StringIO())]
    setup_logging(level)
    for name in QUIET_BELOW_DEBUG:
        assert logging.getLogger(name).getEffectiveLevel() == httpx_heard_at
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO) == (level == "debug")
    assert logging.getLogger("app.access").isEnabledFor(logging.INFO)  # the gateway's own lines stay


async def test_each_upstream_call_is_one_debug_line_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="app.upstream.instrumented")
    await adapter(Inner()).get(SECRET, "up_1")
    with pytest.raises(UpstreamTimeout):
        await adapter(Inner(fail=True)).get(SECRET, "up_2")
    lines = [r.getMessage() for r in caplog.records if r.name == "app.upstream.instrumented"]
    assert len(lines) == 2
    assert lines[0].startswith("upstream get with key key_a: ok in ")
    assert lines[1].startswith("upstream get with key key_a: timeout in ")
    assert all(SECRET not in line for line in lines)


async def test_no_line_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await adapter(Inner()).get(SECRET, "up_1")
    assert [r for r in caplog.records if r.name == "app.upstream.instrumented"] == []
