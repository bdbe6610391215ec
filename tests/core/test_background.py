"""Stopping a background loop: its cancellation is absorbed, the stopper's own is not."""

from __future__ import annotations

import asyncio

import pytest

from app.core.background import cancel_and_wait


async def test_the_loop_ends_and_its_cancellation_is_absorbed() -> None:
    loop_task = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(loop_task)
    assert loop_task.cancelled()


async def test_a_stopper_that_is_cancelled_itself_is_not_kept_running() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()  # its clean-up takes a while

    loop_task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(loop_task))
    await asyncio.sleep(0)
    stopper.cancel()
    release.set()  # the stopper waits for the clean-up either way: asyncio ties an awaiting task to the awaited one
    with pytest.raises(asyncio.CancelledError):
        await stopper  # with suppress(CancelledError) it used to swallow this and carry on with the shutdown
    assert loop_task.cancelled()


async def test_an_ended_or_missing_loop_is_left_alone() -> None:
    await cancel_and_wait(None)
    failed = asyncio.create_task(asyncio.sleep(0, result=None))
    await failed
    await cancel_and_wait(failed)
