"""Request bodies: their limit and pace decided from the headers, before a byte of the body is read.

- Every request but an upload has its body read whole, up to `max_body_bytes` (1 MB by default), before the app sees
  it: 413 the moment it goes over, whether it declared its size (Content-Length) or not (`Transfer-Encoding:
  chunked`, or a lying length). The app then reads the buffered body from a replaying `receive`. (Raising inside the
  app's own `receive` instead would reach FastAPI's body parser, which answers any such failure with a 400.)
- The gateway's upload route (`POST /v1/uploads/images`, that path exactly) is passed on unread: it authenticates
  the caller from the headers, takes one of the tenant's upload slots, and only then reads its body, with the upload
  limit, through `paced` (app/uploads/router.py). A path that merely ends the same way gets the small limit.
  `upload_paths` names other routes buffered with the upload limit: the zero-config sandbox's own upload route,
  mounted in the same process, which the gateway calls on itself.
- Every body must keep a minimum pace (`Pace`): after a grace period, at least `min_rate` bytes a second on average
  since the request began. One that falls behind is answered 408 and its connection closed, so a client trickling a
  body holds neither memory nor an upload slot for long.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.contract import MAX_UPLOAD_BYTES

UPLOAD_PATH = "/v1/uploads/images"
# The multipart framing around an upload's file: boundaries, part headers, the `purpose` field.
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_BODY_LIMIT = MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD
UPLOAD_TOO_LARGE_MESSAGE = "Image too large. Maximum size is 10MB"
TOO_SLOW_MESSAGE = "Request body arrived too slowly (under {rate} bytes/s); the connection is closed."
CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class Pace:
    """The slowest a body may arrive: `grace_s` seconds for anything, then `min_rate` bytes a second on average.

    16 KiB/s is 128 kbit/s, below any uplink a client would upload from, yet a trickling client is dropped within
    seconds; a 10 MB upload may take up to ~11 minutes at that pace.
    """

    min_rate: float = 16 * 1024
    grace_s: float = 10.0


DEFAULT_PACE = Pace()


class BodyRefused(Exception):
    """The body was not read to its end: over its limit, too slow, or its client went away."""


class BodyTooLarge(BodyRefused):
    pass


class BodyTooSlow(BodyRefused):
    pass


class ClientGone(BodyRefused):
    pass


def paced(receive: Receive, limit: int, pace: Pace = DEFAULT_PACE) -> Receive:
    """`receive`, raising BodyTooLarge once more than `limit` body bytes arrived, and BodyTooSlow when the body
    falls behind `pace` (no message for longer than its bytes so far allow). A disconnect is passed on as is.

    Waiting costs one timer per call (the event loop's call_at): cheaper than `asyncio.timeout`, which matters on
    the hot path, where every JSON body is read through this.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0

    async def paced_receive() -> Message:
        nonlocal received
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_at(started + pace.grace_s + received / pace.min_rate, expire)
        try:
            message = await receive()
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:  # our own cancellation, and nobody else's
                raise BodyTooSlow() from None
            raise
        finally:
            timer.cancel()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge()
        return message

    return paced_receive


async def read_body(receive: Receive, limit: int, pace: Pace = DEFAULT_PACE) -> bytes:
    """The whole body, read through `paced`; BodyRefused (ClientGone on a disconnect) when it cannot be."""
    chunks: list[bytes] = []
    reader = paced(receive, limit, pace)
    while True:
        message = await reader()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodySizeLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        *,
        upload_paths: Collection[str] = (),
        pace: Pace = DEFAULT_PACE,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_paths = frozenset(upload_paths)
        self.pace = pace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and is_upload_route(scope):  # read by the route, once it knows who calls
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared == 0:  # no body at all (a GET, say): nothing to bound, nothing to wait for
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in self.upload_paths  # answered in the upload envelope, as upstream
        limit = UPLOAD_BODY_LIMIT if upload else self.max_body_bytes
        if declared is not None and declared > limit:
            await too_large(send, limit, upload=upload)
            return
        try:
            body = await read_body(receive, limit, self.pace)
        except ClientGone:  # nobody to answer
            return
        except BodyTooLarge:
            await too_large(send, limit, upload=upload)
            return
        except BodyTooSlow:
            await too_slow(send, self.pace, upload=upload)
            return
        await self.app(scope, replay({"type": "http.request", "body": body, "more_body": False}, receive), send)


def is_upload_route(scope: Scope) -> bool:
    """The gateway's own upload route (under the app's root path, if any)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return (path[len(root) :] if root and path.startswith(root) else path) == UPLOAD_PATH


def _declared_length(scope: Scope) -> int | None:
    """The body's declared length: Content-Length; None for a chunked body (or a length that is no number); 0 when
    the request declares neither, as HTTP/1.1 then has no body."""
    length: int | None = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            return None
    return length


def replay(message: Message, receive: Receive) -> Receive:
    """`message` (the buffered body), then the real channel (so a disconnect still reaches the app)."""
    delivered = False

    async def replaying_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return message
        return await receive()

    return replaying_receive


async def too_large(send: Send, limit: int, *, upload: bool) -> None:
    # The connection stays open: the server reads the rest of the body and drops it, so that a client still sending
    # it gets to read this answer (closed now, its next write would be reset, and the answer lost with it).
    if upload:
        await respond(send, 413, {"success": False, "message": UPLOAD_TOO_LARGE_MESSAGE})
        return
    await respond(send, 413, error("invalid_request", f"Request body too large (limit {limit} bytes)."))


async def too_slow(send: Send, pace: Pace, *, upload: bool) -> None:
    message = TOO_SLOW_MESSAGE.format(rate=int(pace.min_rate))
    payload = {"success": False, "message": message} if upload else error("request_timeout", message)
    await respond(send, 408, payload, [CLOSE])


def error(code: str, message: str) -> dict[str, Any]:
    """The contract's error shape."""
    return {"error": {"code": code, "type": "invalid_request_error", "message": message}}


async def respond(
    send: Send, status: int, payload: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
