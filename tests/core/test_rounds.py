"""A background loop's rounds (app/core/background.py `Rounds`): the pause, the back-off while rounds fail, what a
failure logs; and its `Wakeup`, rung after a commit."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.background import Rounds, Wakeup, max_backoff
from app.core.outage import OutageTracker

LOGGER = "tests.rounds"


class _Stop(BaseException):
    """Not an Exception: the loop lets it through, as it does a cancellation."""


class Script:
    """A round that does what it is told, one step a round: an exception to raise, or whether more is due."""

    def __init__(self, *steps: BaseException | bool) -> None:
        self.steps = list(steps)

    async def __call__(self) -> bool:
        step = self.steps.pop(0) if self.steps else _Stop()
        if isinstance(step, BaseException):
            raise step
        return step


class Pauses:
    def __init__(self, stop_after: int = 100) -> None:
        self.seen: list[float] = []
        self.stop_after = stop_after

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)
        if len(self.seen) >= self.stop_after:
            raise _Stop


def _rounds(interval_s: float, tracker: OutageTracker) -> Rounds:
    return Rounds(
        "test round", source="the test loop", interval_s=interval_s, logger=logging.getLogger(LOGGER), tracker=tracker
    )


@pytest.mark.parametrize(("interval", "cap"), [(5.0, 30.0), (1.0, 6.0), (0.05, 0.3), (60.0, 60.0)])
def test_the_back_off_is_capped_at_six_intervals_and_30_s(interval: float, cap: float) -> None:
    assert max_backoff(interval) == pytest.approx(cap)


async def test_failures_back_off_then_a_success_pauses_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    tracker = OutageTracker("database", logger=logging.getLogger(LOGGER))
    rounds = _rounds(1.0, tracker)
    idle, backing_off = Pauses(), Pauses()
    script = Script(KeyError("bug"), KeyError("bug"), KeyError("bug"), KeyError("bug"), False, True, False)
    caplog.set_level(logging.DEBUG, LOGGER)
    with pytest.raises(_Stop):
        await rounds.run_forever(script, pause=idle, pause_after_failure=backing_off)
    assert backing_off.seen == [2.0, 4.0, 6.0, 6.0]
    assert idle.seen == [1.0, 1.0]  # after a round: the interval; none after the round that says more is due
    assert rounds.failed == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert errors[0].startswith("test round failed; next in 2.0 s\n") and "KeyError: 'bug'" in errors[0]
    assert not tracker.is_down


async def test_a_failure_pauses_with_the_pause_unless_told_otherwise() -> None:
    tracker = OutageTracker("database", logger=logging.getLogger(LOGGER))
    rounds = _rounds(5.0, tracker)
    idle = Pauses(stop_after=3)
    with pytest.raises(_Stop):
        await rounds.run_forever(Script(ValueError("x"), ValueError("y"), False), pause=idle)
    assert idle.seen == [10.0, 20.0, 5.0]
    assert rounds.failed == 0


async def test_the_database_away_is_the_trackers_to_log_once(caplog: pytest.LogCaptureFixture) -> None:
    tracker = OutageTracker("database", logger=logging.getLogger(LOGGER))
    rounds = _rounds(1.0, tracker)
    away = sa_exc.TimeoutError("QueuePool limit reached")
    idle = Pauses(stop_after=4)
    caplog.set_level(logging.DEBUG, LOGGER)
    with pytest.raises(_Stop):
        await rounds.run_forever(Script(away, away, away, False), pause=idle)
    assert idle.seen == [2.0, 4.0, 6.0, 1.0]
    assert tracker.failures == 3 and tracker.is_down  # recovered by whatever uses the database, not by the loop
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records if r.levelno >= logging.INFO] == [logging.WARNING]
    assert "the test loop" in next(r for r in records if r.levelno == logging.WARNING).getMessage()
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert len(debug) == 3 and debug[0].startswith("test round failed (") and debug[0].endswith("; next in 2.0 s")


async def test_cancelling_the_loop_ends_it() -> None:
    rounds = _rounds(3600.0, OutageTracker("database", logger=logging.getLogger(LOGGER)))
    loop = asyncio.create_task(rounds.run_forever(Script(False), pause=asyncio.sleep))
    await asyncio.sleep(0)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop


async def test_a_wakeup_ends_the_wait_and_is_kept_until_then() -> None:
    wakeup = Wakeup("tests_wake")
    started = asyncio.get_running_loop().time()
    await wakeup.wait(0.01)  # nothing: the timeout
    wakeup.set()  # rung while no one waits (during a round): the next wait returns at once
    await asyncio.wait_for(wakeup.wait(3600), 5)
    waiting = asyncio.create_task(wakeup.wait(3600))
    await asyncio.sleep(0)
    wakeup.set()
    await asyncio.wait_for(waiting, 5)
    assert asyncio.get_running_loop().time() - started < 5


async def test_after_commit_rings_once_the_transaction_has_committed() -> None:
    wakeup = Wakeup("tests_wake")
    session = AsyncSession()  # no bind: an empty transaction commits without a connection
    try:
        wakeup.after_commit(session)
        wakeup.after_commit(session)  # registered once per session
        assert session.info["tests_wake"] is True
        assert not wakeup._event.is_set()
        await session.commit()
        assert wakeup._event.is_set() and "tests_wake" not in session.info
        await wakeup.wait(0)
        await session.commit()  # the listener was for that commit only
        assert not wakeup._event.is_set()
    finally:
        await session.close()
