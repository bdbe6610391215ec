"""Background loops: stopping one without losing the stopper's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended.

    The task's own CancelledError is expected and absorbed; the caller's is not: a stop that is itself cancelled
    (a shutdown cut short, a test's loop closing) ends at once instead of carrying on as if nothing happened.
    """
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: an ended loop's error was logged by the loop itself
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
