"""The task event stream (`GET /v1/images/generations/{id}/events`) and CORS, in process.

httpx's ASGI transport hands a response over only once it is complete, so streams are read here through a small
ASGI driver (`AsgiStream`) that sees each chunk as the app sends it and can hang up like a browser does. The fake
clock moves the sandbox's tasks; the streams poll on real time, every 20 ms here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import Message

from app.tasks.events import KEEP_ALIVE, TaskEvents, parse_last_event_id, step_of
from app.tasks.service import TaskService
from tests.fixtures.gateway import Harness, key_known, running_gateway

URL = "/v1/images/generations"
ORIGIN = "https://app.example"
WAIT_S = 20.0  # generous: a busy machine, two databases


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Event:
    id: int
    event: str
    data: bytes

    @property
    def task(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


class AsgiStream:
    """One GET through the ASGI app, read chunk by chunk as it is sent; `hang_up()` is the client going away."""

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str]) -> None:
        self._app = app
        self._path = path
        self._headers = [(k.lower().encode(), v.encode()) for k, v in {"host": "gateway.test", **headers}.items()]
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.finished = False
        self.call: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiStream:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},  # the spec where Starlette itself would not listen
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self._path,
            "raw_path": self._path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": self._headers,
            "client": ("127.0.0.1", 50000),
            "server": ("gateway.test", 80),
        }
        self.call = asyncio.create_task(self._app(scope, self._receive, self._messages.put))
        start = await self._next()
        assert start["type"] == "http.response.start", start
        self.status = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return self

    async def __aexit__(self, *_: object) -> None:
        self.hang_up()
        assert self.call is not None
        await asyncio.wait_for(self.call, WAIT_S)

    async def _receive(self) -> Message:
        if not getattr(self, "_requested", False):
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _next(self) -> Message:
        try:
            return await asyncio.wait_for(self._messages.get(), WAIT_S)
        except TimeoutError:
            pytest.fail(f"nothing sent for {WAIT_S} s (buffered: {self._buffer!r})")

    def hang_up(self) -> None:
        self._gone.set()

    async def chunk(self) -> bytes | None:
        """The next block (an event or a comment, without its blank line); None once the response has ended."""
        while b"\n\n" not in self._buffer:
            if self.finished:
                assert not self._buffer, self._buffer
                return None
            message = await self._next()
            assert message["type"] == "http.response.body", message
            self._buffer += message.get("body", b"")
            self.finished = not message.get("more_body", False)
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        return block

    async def event(self) -> Event | None:
        """The next event, skipping comments; None once the response has ended."""
        while True:
            block = await self.chunk()
            if block is None:
                return None
            if not block.startswith(b":"):
                return parse(block)

    async def body(self) -> bytes:
        while not self.finished:
            message = await self._next()
            self._buffer += message.get("body", b"")
            self.finished = not message.get("more_body", False)
        return self._buffer


def parse(block: bytes) -> Event:
    fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
    assert set(fields) == {b"id", b"event", b"data"}, block
    return Event(id=int(fields[b"id"]), event=fields[b"event"].decode(), data=fields[b"data"])


def parse_all(body: bytes) -> list[Event]:
    assert body.endswith(b"\n\n"), body
    return [parse(block) for block in body[:-2].split(b"\n\n") if not block.startswith(b":")]


@pytest.fixture
async def sse(database_url: str) -> AsyncIterator[Harness]:
    async with running_gateway(database_url, events_poll_interval_s=0.02) as harness:
        yield harness


async def submit(gw: Harness, key: str, **body: Any) -> str:
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox", **body})
    assert r.status_code == 200, r.text
    task_id: str = r.json()["id"]
    return task_id


def streams_of(gw: Harness) -> TaskEvents:
    events: TaskEvents = gw.app.state.task_events
    return events


async def until(condition: Any, what: str) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"still not {what} after {WAIT_S} s")


# --- the stream ---------------------------------------------------------------------------------------------------


async def test_stream_follows_the_task_to_its_end_then_closes(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key, n=2)
    async with AsgiStream(sse.app, f"{URL}/{task_id}/events", bearer(key)) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        first = await stream.event()
        assert first is not None and first.event == "status"
        assert first.task["id"] == task_id and first.task["status"] == "queued" and first.id == 1000
        seen = [first]
        for advance in (2, 3, 3, 3):  # queued 1 s, then 10 s in progress
            sse.clock.advance(advance)
            event = await stream.event()
            assert event is not None
            seen.append(event)
            if event.task["status"] == "completed":
                break
        assert await stream.event() is None  # closed after the final event
        assert stream.finished
    assert [e.id for e in seen] == sorted({e.id for e in seen}), "ids strictly increase"
    assert {e.event for e in seen} == {"status"}
    statuses = [e.task["status"] for e in seen]
    assert statuses[-1] == "completed" and "in_progress" in statuses
    progress = [e.task["progress"] for e in seen if e.task["status"] == "in_progress"]
    assert progress == sorted(progress) and all(0 < p < 100 for p in progress)
    final = seen[-1]
    assert final.id == 3100 and len(final.task["result"]["data"]) == 2
    # The data is the status call's answer, byte for byte.
    status = await sse.client.get(f"{URL}/{task_id}", headers=bearer(key))
    assert status.content == final.data
    await until(lambda: streams_of(sse).open_streams == 0, "closed")


async def test_each_event_is_the_status_answer_of_its_moment(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key)
    sse.clock.advance(4)
    async with AsgiStream(sse.app, f"{URL}/{task_id}/events", bearer(key)) as stream:
        event = await stream.event()
        assert event is not None and event.task["status"] == "in_progress"
        status = await sse.client.get(f"{URL}/{task_id}", headers=bearer(key))
        assert status.content == event.data
        assert event.id == step_of(status.content)[0] == 2000 + status.json()["progress"]


async def test_a_heartbeat_comment_keeps_a_quiet_stream_open(database_url: str) -> None:
    async with running_gateway(database_url, events_poll_interval_s=0.02, events_heartbeat_s=0.1) as gw:
        key = await gw.new_tenant("acme")
        task_id = await submit(gw, key)
        async with AsgiStream(gw.app, f"{URL}/{task_id}/events", bearer(key)) as stream:
            assert (await stream.chunk() or b"").startswith(b"id: 1000\n")
            # The fake clock stands still: nothing changes, so only comments come.
            for _ in range(3):
                assert await stream.chunk() == KEEP_ALIVE[:-2]
            gw.clock.advance(3)
            while (block := await stream.chunk()) == KEEP_ALIVE[:-2]:
                pass
            assert block is not None and parse(block).task["status"] == "in_progress"


async def test_a_client_going_away_ends_its_stream(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key)
    events = streams_of(sse)
    async with AsgiStream(sse.app, f"{URL}/{task_id}/events", bearer(key)) as stream:
        assert await stream.event() is not None
        assert events.open_streams == 1
        stream.hang_up()
        assert stream.call is not None
        await asyncio.wait_for(stream.call, WAIT_S)  # the app's call returns: nothing left running
    assert events.open_streams == 0
    sent = [stream._messages.get_nowait() for _ in range(stream._messages.qsize())]
    assert all(m.get("more_body") for m in sent), "cut mid-stream: no end of body sent"


async def test_many_streams_of_one_task_share_the_upstream_calls(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key)
    streams = [AsgiStream(sse.app, f"{URL}/{task_id}/events", bearer(key)) for _ in range(20)]
    for stream in streams:
        await stream.__aenter__()
    try:
        for stream in streams:
            first = await stream.event()
            assert first is not None and first.task["status"] == "queued"
        sse.clock.advance(11)
        for stream in streams:
            final = await stream.event()
            assert final is not None and final.task["status"] == "completed"
            assert await stream.event() is None
    finally:
        for stream in streams:
            await stream.__aexit__()
    # One refresh for the first look and one after the clock moved (at most once per refresh interval, shared).
    assert sse.sandbox_stats()["status"] <= 3
    assert streams_of(sse).open_streams == 0


# --- resuming -----------------------------------------------------------------------------------------------------


async def test_resume_sends_only_what_the_client_lacks(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key)
    sse.clock.advance(4)
    async with AsgiStream(sse.app, f"{URL}/{task_id}/events", bearer(key)) as stream:
        current = await stream.event()
    assert current is not None and current.task["status"] == "in_progress"
    # Reconnecting with the id just received: no repeat, the next event is a later state.
    headers = {**bearer(key), "Last-Event-ID": str(current.id), "X-Request-ID": "sse-resume-1"}
    async with AsgiStream(sse.app, f"{URL}/{task_id}/events", headers) as stream:
        assert stream.headers["x-request-id"] == "sse-resume-1"  # an event stream carries its request id too
        sse.clock.advance(2)
        later = await stream.event()
        assert later is not None and later.id > current.id and later.data != current.data


async def test_resume_after_the_end_is_the_final_event_alone_or_nothing(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key)
    sse.clock.advance(11)
    path = f"{URL}/{task_id}/events"
    done = await sse.client.get(path, headers={**bearer(key), "Last-Event-ID": "2050"})
    assert done.status_code == 200
    [final] = parse_all(done.content)
    assert final.id == 3100 and final.task["status"] == "completed"
    # The client has the final event: nothing to send, and a 204 stops an EventSource from reconnecting.
    again = await sse.client.get(path, headers={**bearer(key), "Last-Event-ID": "3100"})
    assert again.status_code == 204 and again.content == b""
    # An id this stream never sends is no resume point: the final event again.
    for odd in ("", "abc", "-1", "999", "3101", "99999999999", "1e3"):
        r = await sse.client.get(path, headers={**bearer(key), "Last-Event-ID": odd})
        assert r.status_code == 200 and [e.id for e in parse_all(r.content)] == [3100], odd


async def test_a_failed_task_ends_its_stream_with_the_failure(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    task_id = await submit(sse, key, prompt="a fox [fault:fail]")
    sse.clock.advance(11)
    r = await sse.client.get(f"{URL}/{task_id}/events", headers=bearer(key))
    assert r.status_code == 200
    [final] = parse_all(r.content)
    assert final.id == 3000 and final.task["status"] == "failed" and final.task["error"]["code"]


def test_steps_order_the_states() -> None:
    def body(status: str, progress: int) -> bytes:
        return json.dumps({"status": status, "progress": progress}).encode()

    assert step_of(body("queued", 0)) == (1000, False)
    assert step_of(body("in_progress", 42)) == (2042, False)
    assert step_of(body("completed", 100)) == (3100, True)
    assert step_of(body("failed", 0)) == (3000, True)
    assert parse_last_event_id(" 2042 ") == 2042
    odd = (None, "", "x", "0", "999", "3101", "+1000", "\u0661\u0660\u0660\u0660")  # the last: Arabic-Indic 1000
    assert [parse_last_event_id(v) for v in odd] == [None] * len(odd)


# --- refused before streaming -------------------------------------------------------------------------------------


async def test_unknown_and_foreign_tasks_and_bad_keys_are_refused_before_streaming(sse: Harness) -> None:
    key = await sse.new_tenant("acme")
    other = await sse.new_tenant("globex")
    task_id = await submit(sse, key)
    tenant = await sse.tenant_id(key)
    writer = (await sse.tenants.create_key(tenant, scopes=["submit"], actor="test")).key
    cases = [
        (f"{URL}/{task_id}/events", {}, 401, "unauthorized"),
        (f"{URL}/{task_id}/events", bearer("sk-gw-not-a-key"), 401, "unauthorized"),
        (f"{URL}/{task_id}/events", bearer(writer), 403, "forbidden"),
        (f"{URL}/{task_id}/events", bearer(other), 404, "task_not_found"),
        (f"{URL}/task_img_0000/events", bearer(key), 404, "task_not_found"),
        (f"{URL}/%00/events", bearer(key), 404, "task_not_found"),
    ]
    for path, headers, status, code in cases:
        r = await sse.client.get(path, headers=headers)
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"error"} and r.json()["error"]["code"] == code, r.text
    assert streams_of(sse).open_streams == 0


async def test_a_stream_counts_once_against_the_query_rate(sse: Harness) -> None:
    key = await sse.new_tenant("acme", query_rpm=2)
    task_id = await submit(sse, key)
    async with AsgiStream(sse.app, f"{URL}/{task_id}/events", bearer(key)) as stream:
        assert stream.status == 200
        assert stream.headers["x-ratelimit-limit"] == "2" and stream.headers["x-ratelimit-remaining"] == "1"
        assert await stream.event() is not None
        await asyncio.sleep(0.2)  # polls go on without being counted
        status = await sse.client.get(f"{URL}/{task_id}", headers=bearer(key))
        assert status.status_code == 200 and status.headers["x-ratelimit-remaining"] == "0"
    refused = await sse.client.get(f"{URL}/{task_id}/events", headers=bearer(key))
    assert refused.status_code == 429 and "retry-after" in refused.headers
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


# --- CORS ---------------------------------------------------------------------------------------------------------


@pytest.fixture
async def cors(database_url: str) -> AsyncIterator[Harness]:
    async with running_gateway(database_url, cors_origins=f"{ORIGIN}/, https://other.example") as harness:
        yield harness


async def test_preflight_allows_the_configured_origins_and_headers(cors: Harness) -> None:
    asked = "authorization, content-type, idempotency-key"
    r = await cors.client.options(
        URL,
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked},
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in r.headers

    events = await cors.client.options(
        f"{URL}/task_img_0000/events",
        headers={
            "Origin": "https://other.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id",
        },
    )
    assert events.status_code == 200 and events.headers["access-control-allow-origin"] == "https://other.example"

    refused = await cors.client.options(
        URL, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


async def test_answers_carry_cors_headers_for_allowed_origins_only(cors: Harness) -> None:
    key = await cors.new_tenant("acme", query_rpm=100)
    task_id = await submit(cors, key)
    cors.clock.advance(11)  # ended: its stream is one event, then closed
    r = await cors.client.get(f"{URL}/{task_id}", headers={**bearer(key), "Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert exposed == {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after", "x-request-id"}
    assert "x-ratelimit-remaining" in r.headers

    stream = await cors.client.get(f"{URL}/{task_id}/events", headers={**bearer(key), "Origin": ORIGIN})
    assert stream.status_code == 200 and stream.headers["access-control-allow-origin"] == ORIGIN

    error = await cors.client.get(f"{URL}/task_img_0000", headers={**bearer(key), "Origin": ORIGIN})
    assert error.status_code == 404 and error.headers["access-control-allow-origin"] == ORIGIN

    await cors.app.state.invalidator.poll_once()
    foreign = await cors.client.get(f"{URL}/{task_id}", headers={**bearer(key), "Origin": "https://evil.example"})
    assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers


async def test_a_warm_status_answered_before_routing_carries_cors_headers(
    cors: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await cors.new_tenant("acme")
    task_id = await submit(cors, key)
    cors.clock.advance(11)
    warm = await cors.client.get(f"{URL}/{task_id}", headers=bearer(key))  # completed: kept in memory
    assert warm.json()["status"] == "completed"

    async def not_routed(*_: object) -> bytes:
        raise AssertionError("the status route ran: the call did not take the fast path")

    monkeypatch.setattr(TaskService, "status_answer", not_routed)
    # Caches are trusted only while the invalidator's last read is recent: on a busy machine its loop may lag.
    await key_known(cors, key)
    r = await cors.client.get(f"{URL}/{task_id}", headers={**bearer(key), "Origin": ORIGIN})
    assert r.status_code == 200 and r.content == warm.content
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-expose-headers" in r.headers
    await key_known(cors, key)
    foreign = await cors.client.get(f"{URL}/{task_id}", headers={**bearer(key), "Origin": "https://evil.example"})
    assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers


async def test_cors_is_off_without_origins(gw: Harness) -> None:
    r = await gw.client.options(URL, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    health = await gw.client.get("/healthz", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in health.headers


async def test_each_event_fits_the_documented_event_schema(gw: Harness) -> None:
    """The document described the whole stream as one string, and schemathesis found every event violating it:
    each event (its `event`, `id` and `data`, the task object as JSON) now fits the schema it documents."""
    import schemathesis

    from tests.fixtures.gateway import completed_task

    key = await gw.new_tenant("acme")
    task_id = await completed_task(gw, key)
    r = await gw.client.get(f"{URL}/{task_id}/events", headers=bearer(key))
    assert r.status_code == 200 and r.text.count("event: status") == 1, r.text
    operation = schemathesis.openapi.from_dict(gw.app.openapi())[f"{URL}/{{task_id}}/events"]["GET"]
    operation.validate_response(r)  # raises on a violation
