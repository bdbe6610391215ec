"""The outage tracker logs each outage twice (start, end), and the task poller backs off while the database is down."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from sqlalchemy import text

from app.core import outage
from app.core.db.engine import create_engine, create_session_factory
from app.core.outage import OutageTracker
from app.tasks.reconciler import Reconciler, max_backoff

LOGGER = "tests.outage"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_one_warning_when_it_starts_and_one_info_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    tracker = OutageTracker("database", consequence="answering 503", logger=logging.getLogger(LOGGER), clock=clock)
    caplog.set_level(logging.DEBUG, LOGGER)
    assert not tracker.is_down and not tracker.recovered()
    assert tracker.failed(ConnectionRefusedError(111, "Connect call failed"), source="GET /v1/usage")
    for _ in range(1000):
        assert not tracker.failed("again\nwith a second line")
    assert tracker.is_down and tracker.failures == 1001 and tracker.since == 100.0
    clock.now = 112.5
    assert tracker.recovered()
    assert not tracker.recovered()
    assert not tracker.is_down and tracker.failures == 0

    records = _records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    warning, info = (r.getMessage() for r in records)
    assert warning == (
        "database unavailable: ConnectionRefusedError: [Errno 111] Connect call failed "
        "(first seen by GET /v1/usage); answering 503"
    )
    assert info == "database available again after 12.5 s (1001 failed operations meanwhile)"
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)


def test_a_new_outage_is_logged_again_and_reset_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    tracker = OutageTracker("redis", logger=logging.getLogger(LOGGER))
    caplog.set_level(logging.DEBUG, LOGGER)
    tracker.failed("x" * 1000)
    tracker.recovered()
    tracker.failed(TimeoutError())
    assert tracker.reason == "TimeoutError"
    tracker.reset()
    assert not tracker.is_down
    messages = [r.getMessage() for r in _records(caplog)]
    assert len(messages) == 3
    assert len(messages[0]) < 400 and messages[0].endswith("...")
    assert messages[2] == "redis unavailable: TimeoutError"


def test_trackers_are_per_process_and_per_name() -> None:
    assert outage.tracker("database") is outage.tracker(outage.DATABASE)
    assert outage.tracker(outage.REDIS) is not outage.tracker(outage.DATABASE)
    assert "503" in outage.tracker(outage.DATABASE).consequence


@pytest.mark.parametrize(("interval", "cap"), [(5.0, 30.0), (1.0, 6.0), (0.05, 0.3), (60.0, 60.0), (10.0, 30.0)])
def test_back_off_cap(interval: float, cap: float) -> None:
    assert max_backoff(interval) == pytest.approx(cap)


class _DeadDatabaseTasks:
    """Stands in for TaskService: each sweep runs a real statement on an engine whose server refuses connections,
    until `alive` is set, then on a working one."""

    def __init__(self, dead_url: str, live_url: str, tracker: OutageTracker) -> None:
        self.dead = create_engine(dead_url, pool_size=2, tracker=tracker)
        self.live = create_engine(live_url, pool_size=2, tracker=tracker)
        self.alive = False
        self.sweeps = 0

    async def write_kept_answers(self) -> None:
        pass  # nothing kept: the sweep's own statement meets the outage

    async def claim_due(self, *_: Any) -> list[str]:
        self.sweeps += 1
        async with create_session_factory(self.live if self.alive else self.dead)() as session:
            await session.execute(text("SELECT 1"))
        return []

    async def aclose(self) -> None:
        await self.dead.dispose()
        await self.live.dispose()


class _Stop(Exception):
    pass


async def test_poller_backs_off_while_the_database_is_down_and_logs_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead_url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    tracker = OutageTracker("database", logger=logging.getLogger(LOGGER))
    tasks = _DeadDatabaseTasks(dead_url, database_url, tracker)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 8:
            tasks.alive = True  # the database is back for the following sweeps (the engine ends the outage)
        if len(delays) == 10:
            raise _Stop

    poller = Reconciler(tasks, 5.0, tracker=tracker, sleep=sleep)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(_Stop):
            await poller.run_forever()
    finally:
        await tasks.aclose()
    assert delays == [10.0, 20.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 5.0, 5.0]
    assert tasks.sweeps == 10 and poller.failed_sweeps == 0
    outage_lines = [r for r in _records(caplog) if r.levelno >= logging.INFO]
    assert [r.levelno for r in outage_lines] == [logging.WARNING, logging.INFO]
    assert "ConnectionRefusedError" in outage_lines[0].getMessage()
    assert "task reconciler" in outage_lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_poller_logs_other_failures_with_a_traceback_and_backs_off_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        async def write_kept_answers(self) -> None:
            pass

        async def claim_due(self, *_: Any) -> list[str]:
            raise KeyError("bug")

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 3:
            raise _Stop

    tracker = OutageTracker("database", logger=logging.getLogger(LOGGER))
    poller = Reconciler(Broken(), 1.0, tracker=tracker, sleep=sleep)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(_Stop):
        await poller.run_forever()
    assert delays == [2.0, 4.0, 6.0]
    assert not tracker.is_down
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and "KeyError: 'bug'" in errors[0].getMessage()
