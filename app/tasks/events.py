"""Live task status for browsers: a task's status call as a Server-Sent Events stream, until the task ends.

A stream polls `TaskService.status_answer` every `poll_interval_s` (the status call's own answer: from memory
while it cannot have changed, else from the ledger, refreshed from the upstream at most once per refresh interval,
single-flight in the process and claimed across replicas). Streams of one task in one process share their polls
too (a single-flight of their own), so a thousand browsers watching one task cost about what one does.

Each event is `id: <step>`, `event: status`, `data: <the status call's JSON answer, byte for byte>`. The step
orders a task's states: `1000 x rank + progress`, with rank 1 queued, 2 in_progress, 3 completed or failed, and
the progress the answer shows (completed 100, failed 0), so queued = 1000, in_progress at 42 % = 2042,
completed = 3100, failed = 3000. An event is sent when the step goes above the last one sent, so ids only
increase along a stream and, derived from the task itself, mean the same on every replica and every reconnect
(a progress that goes back is not sent). `Last-Event-ID: <step>` resumes: only later steps follow, and for a task
that has ended only its final event, or nothing (204) when the client already has it, which also tells a browser's
EventSource to stop reconnecting.

A comment line (`: keep-alive`) goes out after `heartbeat_s` without an event, so proxies keep the connection open.
The stream ends after the final event; a client that goes away ends it at once (the poll in flight is dropped,
not the refresh other callers share).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.contract import TaskStatus
from app.core import outage
from app.core.db.errors import describe, is_database_unavailable
from app.core.errors import GatewayError, NotFound
from app.tasks.service import TaskService
from app.tasks.singleflight import SingleFlight

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
KEEP_ALIVE = b": keep-alive\n\n"
DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_S = 15.0

_RANKS = {TaskStatus.QUEUED: 1, TaskStatus.IN_PROGRESS: 2, TaskStatus.COMPLETED: 3, TaskStatus.FAILED: 3}
_FINAL_RANK = 3
MAX_STEP = _FINAL_RANK * 1000 + 100
_STEP = re.compile(r"[0-9]{1,4}")


def step_of(body: bytes) -> tuple[int, bool]:
    """A status answer's step (its event id) and whether it is the task's final state."""
    task: dict[str, Any] = json.loads(body)
    rank = _RANKS[TaskStatus(task["status"])]
    return rank * 1000 + int(task["progress"]), rank == _FINAL_RANK


def parse_last_event_id(value: str | None) -> int | None:
    """The step a reconnecting client already has; None for a missing header or an id this stream never sent."""
    if value is None or _STEP.fullmatch(value.strip()) is None:
        return None
    step = int(value.strip())
    return step if 1000 <= step <= MAX_STEP else None


def format_event(step: int, body: bytes) -> bytes:
    """One SSE event. The answer is compact JSON, so it is one `data:` line (JSON escapes line breaks)."""
    return b"id: %d\nevent: status\ndata: %s\n\n" % (step, body)


class TaskEvents:
    """The event streams of one process."""

    def __init__(
        self,
        tasks: TaskService,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    ) -> None:
        self._tasks = tasks
        self._poll_s = poll_interval_s
        self._heartbeat_s = heartbeat_s
        self._polls: SingleFlight[bytes] = SingleFlight()
        self.open_streams = 0  # streams running in this process

    async def open(
        self, tenant_id: str, task_id: str, last_event_id: str | None, end_user: str | None = None
    ) -> AsyncIterator[bytes] | None:
        """The stream of a tenant's task, or None when the task has ended and the client has its final event.

        Raises NotFound (another tenant's task too, and for a token's `end_user` another end user's) before anything
        is streamed.
        """
        if end_user is None:
            body = await self._answer(tenant_id, task_id)
        else:  # the task must be the end user's; its polls, shared, are the tenant's
            body = await self._tasks.status_answer(tenant_id, task_id, end_user)
        seen = parse_last_event_id(last_event_id)
        step, final = step_of(body)
        if final and seen is not None and seen >= step:
            return None
        return self._stream(tenant_id, task_id, body, -1 if seen is None else seen)

    async def _answer(self, tenant_id: str, task_id: str) -> bytes:
        return await self._polls.do(f"{tenant_id}/{task_id}", lambda: self._tasks.status_answer(tenant_id, task_id))

    async def _next_answer(self, tenant_id: str, task_id: str, last: bytes) -> bytes:
        """The answer after one poll interval; the last one again while the ledger cannot be read."""
        await asyncio.sleep(self._poll_s)
        try:
            return await self._answer(tenant_id, task_id)
        except NotFound:
            raise
        except (GatewayError, SQLAlchemyError, OSError) as e:
            # The stream keeps its last state and its heartbeat, and goes on when the ledger answers again.
            if is_database_unavailable(e):
                outage.tracker(outage.DATABASE).failed(describe(e), source="an event stream")
            else:
                log.warning("event stream of %s: poll failed (%s), retrying", task_id, e)
            return last

    async def _stream(self, tenant_id: str, task_id: str, body: bytes, seen: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        self.open_streams += 1
        try:
            sent_at = loop.time()
            while True:
                step, final = step_of(body)
                if step > seen:
                    yield format_event(step, body)
                    seen, sent_at = step, loop.time()
                if final:
                    return
                poll = asyncio.ensure_future(self._next_answer(tenant_id, task_id, body))
                try:
                    while not poll.done():
                        await asyncio.wait({poll}, timeout=max(0.0, sent_at + self._heartbeat_s - loop.time()))
                        if not poll.done():
                            yield KEEP_ALIVE
                            sent_at = loop.time()
                    body = poll.result()
                except NotFound:  # the task is gone (its tenant deleted): nothing more to tell
                    return
                finally:
                    poll.cancel()  # only this stream's wait: the poll it shares with others is shielded
        finally:
            self.open_streams -= 1


class EventStreamResponse(StreamingResponse):
    """`text/event-stream`, unbuffered, ended as soon as the client goes away.

    Starlette watches for the disconnect only below ASGI spec 2.4 (and relies on a failing send above); this
    response always does, and closes its generator either way, so a stream's `finally` runs when it ends rather
    than when the generator is garbage collected.
    """

    media_type = MEDIA_TYPE

    def __init__(self, content: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, headers=headers)
        self.headers["Cache-Control"] = "no-cache"
        self.headers["X-Accel-Buffering"] = "no"  # nginx: pass every event on at once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            streaming.cancel()
            watching.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)
            content = self.body_iterator
            if hasattr(content, "aclose"):
                await content.aclose()
        error = None if streaming.cancelled() else streaming.exception()
        if error is not None and not isinstance(error, OSError):  # an OSError: the client is gone
            raise error
