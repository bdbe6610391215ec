"""BodySizeLimit on its own: the body read whole before the app, 413 on the bytes that arrive, few uploads at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.contract import MAX_UPLOAD_BYTES
from app.core.body_limit import UPLOAD_PATH, BodySizeLimit


class RecordingApp:
    """Echoes the body it reads; can be held inside the request until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.entered = 0
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()  # one item per request that read its body
        self.bodies: list[bytes] = []
        self.after_body: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        self.arrivals.put_nowait(None)
        await self.release.wait()
        if scope.get("listen_after_body"):
            self.after_body.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Client:
    """One request's channel: the chunks to deliver, and everything sent back."""

    def __init__(self, chunks: list[bytes], *, disconnect_after: int | None = None) -> None:
        self.chunks = chunks
        self.disconnect_after = disconnect_after
        self.reads = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.reads += 1
        if self.disconnect_after is not None and self.reads > self.disconnect_after:
            return {"type": "http.disconnect"}
        if self.reads > len(self.chunks):
            await asyncio.sleep(3600)  # a real server blocks until the client goes away
        index = self.reads - 1
        return {"type": "http.request", "body": self.chunks[index], "more_body": index < len(self.chunks) - 1}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"))


def http(path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers or [], **extra}


async def call(middleware: BodySizeLimit, scope: Scope, client: Client) -> None:
    await middleware(scope, client.receive, client.send)


async def test_the_app_reads_the_whole_body_replayed_in_one_message() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100)
    client = Client([b"ab", b"", b"cd", b"e"])
    await call(middleware, http("/v1/images/generations"), client)
    assert client.status == 200 and app.bodies == [b"abcde"]


async def test_chunks_over_the_limit_are_413_before_the_app_runs_and_unread_beyond_it() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=10)
    client = Client([b"x" * 6, b"x" * 6, b"x" * 6])
    await call(middleware, http("/v1/images/generations"), client)
    assert client.status == 413 and client.json["error"]["code"] == "invalid_request"
    assert app.entered == 0 and client.reads == 2


async def test_a_declared_length_over_the_limit_is_413_without_reading() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=10)
    client = Client([b"x"])
    await call(middleware, http("/v1/images/generations", headers=[(b"content-length", b"11")]), client)
    assert client.status == 413 and client.reads == 0


async def test_a_body_of_exactly_the_limit_passes() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=10)
    client = Client([b"x" * 4, b"x" * 6])
    await call(middleware, http("/v1/images/generations"), client)
    assert client.status == 200 and app.bodies == [b"x" * 10]


async def test_uploads_get_the_upload_limit_and_envelope() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=10)
    client = Client([b"x" * 1000])
    await call(middleware, http(UPLOAD_PATH), client)
    assert client.status == 200
    too_big = Client([b"x" * (MAX_UPLOAD_BYTES // 2)] * 3)
    await call(middleware, http(UPLOAD_PATH), too_big)
    assert too_big.status == 413
    assert too_big.json == {"success": False, "message": "Image too large. Maximum size is 10MB"}


async def test_a_client_gone_mid_body_gets_no_answer_and_the_app_never_runs() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100, max_concurrent_uploads=1)
    client = Client([b"ab", b"cd", b"ef"], disconnect_after=1)
    await call(middleware, http(UPLOAD_PATH), client)
    assert client.sent == [] and app.entered == 0
    assert middleware.uploads_in_flight == 0


async def test_after_the_body_the_app_still_hears_the_real_channel() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100)
    client = Client([b"ab"], disconnect_after=1)
    await call(middleware, http("/v1/images/generations", listen_after_body=True), client)
    assert app.after_body == [{"type": "http.disconnect"}]


async def test_one_upload_beyond_the_bound_is_429_before_a_byte_is_read() -> None:
    app = RecordingApp()
    app.release.clear()
    middleware = BodySizeLimit(app, max_body_bytes=100, max_concurrent_uploads=2)
    held = [Client([b"img"]) for _ in range(2)]
    running = [asyncio.create_task(call(middleware, http(UPLOAD_PATH), c)) for c in held]
    for _ in held:
        await app.arrivals.get()
    assert middleware.uploads_in_flight == 2

    refused = Client([b"img"])
    await call(middleware, http(UPLOAD_PATH), refused)
    assert refused.status == 429 and refused.reads == 0
    assert refused.json == {"success": False, "message": "Too many uploads in progress; retry shortly."}
    assert int(refused.headers["retry-after"]) >= 1

    # Other requests, and the sandbox's own upload route mounted in the same app, are not bounded by it.
    for scope in (http("/v1/images/generations"), http("/_sandbox" + UPLOAD_PATH), http(UPLOAD_PATH, "GET")):
        other = Client([b"{}"])
        task = asyncio.create_task(call(middleware, scope, other))
        await app.arrivals.get()
        assert other.status is None  # admitted: held inside the app like the uploads
        running.append(task)

    app.release.set()
    await asyncio.gather(*running)
    assert [c.status for c in held] == [200, 200]
    assert middleware.uploads_in_flight == 0
    again = Client([b"img"])
    await call(middleware, http(UPLOAD_PATH), again)
    assert again.status == 200


async def test_a_slot_is_freed_when_the_app_fails() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom")

    middleware = BodySizeLimit(failing, max_body_bytes=100, max_concurrent_uploads=1)
    with pytest.raises(RuntimeError):
        await call(middleware, http(UPLOAD_PATH), Client([b"img"]))
    assert middleware.uploads_in_flight == 0


async def test_the_upload_route_is_recognised_under_a_root_path() -> None:
    app = RecordingApp()
    app.release.clear()
    middleware = BodySizeLimit(app, max_body_bytes=100, max_concurrent_uploads=1)
    scope = http("/gw" + UPLOAD_PATH, root_path="/gw")
    first = asyncio.create_task(call(middleware, scope, Client([b"img"])))
    await app.arrivals.get()
    refused = Client([b"img"])
    await call(middleware, dict(scope), refused)
    assert refused.status == 429
    app.release.set()
    await first


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = BodySizeLimit(app, max_body_bytes=1)
    await middleware({"type": "lifespan"}, Client([]).receive, Client([]).send)
    assert seen == ["lifespan"]
