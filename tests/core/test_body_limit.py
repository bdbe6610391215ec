"""Request limits on their own: BodySizeLimit (the body read whole before the app, 413 on the bytes that arrive, 408
below the minimum pace, the upload route passed on unread), `paced`, the upload slots, and the bounded request head
of the server protocols."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.core.body_limit import (
    UPLOAD_BODY_LIMIT,
    UPLOAD_PATH,
    BodySizeLimit,
    BodyTooLarge,
    BodyTooSlow,
    Pace,
    paced,
)
from app.core.http_protocol import MAX_HEAD_BYTES, BoundedH11Protocol, BoundedHttpToolsProtocol
from app.uploads.service import UploadSlots, per_tenant_bound
from app.upstream.base import UploadRefused

# A pace a test can fall behind in a moment.
QUICK = Pace(min_rate=1000, grace_s=0.05)


class RecordingApp:
    """Echoes the body it reads; can be held inside the request until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.entered = 0
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
        await self.release.wait()
        if scope.get("listen_after_body"):
            self.after_body.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Client:
    """One request's channel: the chunks to deliver (a None is a pause longer than any test's pace allows), and
    everything sent back."""

    def __init__(self, chunks: list[bytes | None], *, disconnect_after: int | None = None) -> None:
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
        chunk = self.chunks[index]
        if chunk is None:
            await asyncio.sleep(3600)
            chunk = b""
        return {"type": "http.request", "body": chunk, "more_body": index < len(self.chunks) - 1}

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


CHUNKED = [(b"transfer-encoding", b"chunked")]


def http(path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    """A request with a body: chunked unless `headers` say otherwise."""
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers or CHUNKED, **extra}


async def call(middleware: BodySizeLimit, scope: Scope, client: Client) -> None:
    await middleware(scope, client.receive, client.send)


# --- BodySizeLimit --------------------------------------------------------------------------------------------------


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


async def test_a_request_without_a_body_goes_on_unread_and_unwrapped() -> None:
    seen: list[Receive] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(receive)

    client = Client([b""])
    await BodySizeLimit(app, max_body_bytes=10)(
        http("/v1/usage", "GET", [(b"accept", b"*/*")]), client.receive, client.send
    )
    assert seen == [client.receive] and client.reads == 0
    await BodySizeLimit(app, max_body_bytes=10)(
        http("/x", headers=[(b"content-length", b"0")]), client.receive, client.send
    )
    assert seen[-1] == client.receive


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


async def test_the_upload_route_is_passed_on_unread_for_the_route_to_read() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=10)
    client = Client([b"x" * 1000])
    await call(middleware, http(UPLOAD_PATH), client)
    assert client.status == 200 and app.bodies == [b"x" * 1000]
    assert client.reads == 1  # the app's own read: nothing was buffered before it
    under_root = Client([b"x" * 1000])
    await call(middleware, http("/gw" + UPLOAD_PATH, root_path="/gw"), under_root)
    assert under_root.status == 200


@pytest.mark.parametrize(
    "scope",
    [
        http("/x" + UPLOAD_PATH),  # issue 19: any path ending like the route got the upload limit
        http("/_sandbox" + UPLOAD_PATH),  # the zero-config sandbox's route, when not configured as one
        http(UPLOAD_PATH, "PUT"),
        http(UPLOAD_PATH + "/"),
    ],
)
async def test_everything_but_the_upload_route_gets_the_small_limit(scope: Scope) -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=1024)
    chunked = Client([b"x" * 1000, b"x" * 1000, b"x" * 1000])
    await call(middleware, dict(scope), chunked)
    assert chunked.status == 413 and chunked.reads == 2 and app.entered == 0
    assert chunked.json["error"] == {
        "code": "invalid_request",
        "type": "invalid_request_error",
        "message": "Request body too large (limit 1024 bytes).",
    }
    declared = Client([b"x"])
    await call(middleware, {**scope, "headers": [(b"content-length", str(10 * 1024 * 1024).encode())]}, declared)
    assert declared.status == 413 and declared.reads == 0


async def test_configured_upload_paths_get_the_upload_limit_and_envelope() -> None:
    app = RecordingApp()
    sandbox = "/_sandbox" + UPLOAD_PATH
    middleware = BodySizeLimit(app, max_body_bytes=10, upload_paths=[sandbox])
    client = Client([b"x" * 1000])
    await call(middleware, http(sandbox), client)
    assert client.status == 200 and app.bodies == [b"x" * 1000]
    too_big = Client([b"x" * (UPLOAD_BODY_LIMIT // 2)] * 3)
    await call(middleware, http(sandbox), too_big)
    assert too_big.status == 413
    assert too_big.json == {"success": False, "message": "Image too large. Maximum size is 10MB"}


async def test_a_body_behind_the_minimum_pace_is_408_and_its_connection_closed() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100_000, pace=QUICK)
    client = Client([b"x" * 10, None])
    await asyncio.wait_for(call(middleware, http("/v1/images/generations"), client), 10)
    assert client.status == 408 and app.entered == 0
    assert client.json["error"]["code"] == "request_timeout"
    assert client.json["error"]["type"] == "invalid_request_error"
    assert client.headers["connection"] == "close"


async def test_a_body_that_keeps_the_pace_is_read_however_many_pieces_it_comes_in() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100_000, pace=Pace(min_rate=1000, grace_s=5))
    client = Client([b"x"] * 200)
    await call(middleware, http("/v1/images/generations"), client)
    assert client.status == 200 and app.bodies == [b"x" * 200]


async def test_a_client_gone_mid_body_gets_no_answer_and_the_app_never_runs() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100)
    client = Client([b"ab", b"cd", b"ef"], disconnect_after=1)
    await call(middleware, http("/v1/images/generations"), client)
    assert client.sent == [] and app.entered == 0


async def test_after_the_body_the_app_still_hears_the_real_channel() -> None:
    app = RecordingApp()
    middleware = BodySizeLimit(app, max_body_bytes=100)
    client = Client([b"ab"], disconnect_after=1)
    await call(middleware, http("/v1/images/generations", listen_after_body=True), client)
    assert app.after_body == [{"type": "http.disconnect"}]


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = BodySizeLimit(app, max_body_bytes=1)
    await middleware({"type": "lifespan"}, Client([]).receive, Client([]).send)
    assert seen == ["lifespan"]


# --- paced ----------------------------------------------------------------------------------------------------------


async def test_paced_raises_too_large_on_the_bytes_that_arrive() -> None:
    receive = paced(Client([b"x" * 6, b"x" * 6]).receive, 10, QUICK)
    assert (await receive())["body"] == b"x" * 6
    with pytest.raises(BodyTooLarge):
        await receive()


async def test_paced_raises_too_slow_and_leaves_the_task_uncancelled() -> None:
    receive = paced(Client([b"x", None]).receive, 1000, QUICK)
    await receive()
    with pytest.raises(BodyTooSlow):
        await receive()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the task goes on normally


async def test_a_cancellation_from_elsewhere_is_not_taken_for_slowness() -> None:
    receive = paced(Client([None]).receive, 1000, Pace(min_rate=1000, grace_s=60))
    reading = asyncio.create_task(receive())
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading


# --- upload slots ---------------------------------------------------------------------------------------------------


def test_a_tenant_gets_a_quarter_of_the_slots_and_at_least_one() -> None:
    assert [per_tenant_bound(n) for n in (1, 3, 4, 8, 16)] == [1, 1, 1, 2, 4]


def test_slots_are_bounded_per_tenant_and_per_process_and_freed() -> None:
    slots = UploadSlots(total=3, per_tenant=2)
    with slots.take("a"), slots.take("a"):
        with pytest.raises(UploadRefused) as refused, slots.take("a"):
            pass
        assert refused.value.status_code == 429 and refused.value.retry_after_s == 1
        with slots.take("b"):  # another tenant still gets in, up to the process's bound
            assert slots.in_flight == 3
            with pytest.raises(UploadRefused), slots.take("c"):
                pass
    assert slots.in_flight == 0 and slots.by_tenant == {}
    with pytest.raises(RuntimeError), slots.take("a"):
        raise RuntimeError("the upload failed")
    assert slots.in_flight == 0 and slots.by_tenant == {}


# --- the request head (the server protocols) ------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.ended = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.ended = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _serve(protocol_class: Any, data: bytes, read_size: int = 65536) -> FakeTransport:
    """Feed `data` to a fresh connection of the protocol in reads of `read_size`, as the event loop would."""
    config = Config(app=_ok, http=protocol_class, h11_max_incomplete_event_size=MAX_HEAD_BYTES, log_level="critical")
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    for start in range(0, len(data), read_size):
        protocol.data_received(data[start : start + read_size])  # after a refusal: dropped
    for _ in range(100):  # the app runs in a task of its own
        if transport.written:
            break
        await asyncio.sleep(0.01)
    return transport


def _request(header_bytes: int, body: bytes = b"") -> bytes:
    head = b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: " + str(len(body)).encode() + b"\r\nX-Big: "
    return head + b"a" * header_bytes + b"\r\n\r\n" + body


PROTOCOLS = [BoundedH11Protocol, *([BoundedHttpToolsProtocol] if BoundedHttpToolsProtocol is not None else [])]


@pytest.mark.parametrize("protocol_class", PROTOCOLS)
async def test_a_head_over_the_bound_is_431_in_the_error_shape_and_closed(protocol_class: Any) -> None:
    transport = await _serve(protocol_class, _request(8 * 1024 * 1024))
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    # The stream ended after the answer (the rest of the head was dropped, unparsed); closed after the linger.
    assert transport.ended and not transport.closed


@pytest.mark.parametrize("protocol_class", PROTOCOLS)
async def test_a_head_under_the_bound_is_served_with_its_body(protocol_class: Any) -> None:
    transport = await _serve(protocol_class, _request(MAX_HEAD_BYTES - 1024, b"x" * 300_000))
    assert transport.written.startswith(b"HTTP/1.1 200 ")


async def test_httptools_counts_only_the_heads_bytes_whatever_a_read_carries() -> None:
    if BoundedHttpToolsProtocol is None:
        pytest.skip("httptools is not installed")
    # A read carrying a 200 KB body's end and the start of the next request's head: only the head is counted.
    body = b"x" * 200_000
    pipelined = _request(1000, body) + _request(1000, body)
    split = len(_request(1000)) + 150_000  # the second read: the first body's last 50 KB, then the second head
    served = await _serve(BoundedHttpToolsProtocol, pipelined, read_size=split)
    for _ in range(100):
        if served.written.count(b"HTTP/1.1 200 ") == 2:
            break
        await asyncio.sleep(0.01)
    assert served.written.count(b"HTTP/1.1 200 ") == 2, served.written[:200]
    # A head whose end is still to come once the bound (and, of a header begun in the head's first read, that
    # read) has arrived is refused there, whatever the size of the reads.
    for read_size in (1000, 65536, 256 * 1024):
        over = await _serve(BoundedHttpToolsProtocol, _request(8 * MAX_HEAD_BYTES), read_size=read_size)
        assert over.written.startswith(b"HTTP/1.1 431 "), read_size
    # Many small requests pipelined in one read are each a head of their own.
    small = _request(1000)
    served = await _serve(BoundedHttpToolsProtocol, small * 100, read_size=256 * 1024)
    for _ in range(100):
        if served.written.count(b"HTTP/1.1 200 ") == 100:
            break
        await asyncio.sleep(0.01)
    assert served.written.count(b"HTTP/1.1 200 ") == 100
