"""Request bodies: read whole, up to a limit, before the app sees them; and few uploads buffered at once.

The limit is enforced on the bytes that arrive, so a body sent without Content-Length (`Transfer-Encoding:
chunked`) or with a lying one answers 413 the moment it goes over, like one that declares its size up front. The
app then reads the buffered body from a replaying `receive`. (Raising inside the app's own `receive` instead would
reach FastAPI's body parser, which answers any such failure with a 400.)

Upload bodies are up to 10 MB, held in memory while the upload goes upstream: at most `max_concurrent_uploads`
of them are in flight per process. One more is refused with 429 and `Retry-After` before a byte of it is read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.contract import MAX_UPLOAD_BYTES

UPLOAD_PATH = "/v1/uploads/images"
_MULTIPART_OVERHEAD = 64 * 1024
DEFAULT_MAX_CONCURRENT_UPLOADS = 8
UPLOAD_RETRY_AFTER_S = 1
UPLOAD_TOO_LARGE_MESSAGE = "Image too large. Maximum size is 10MB"


class BodySizeLimit:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrent_uploads = max_concurrent_uploads
        self.uploads_in_flight = 0  # one event loop per process: a plain counter needs no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        # Any upload route (the mounted sandbox's included) gets the upload size and the upload envelope...
        upload = path.endswith(UPLOAD_PATH)
        limit = MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD if upload else self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit, upload=upload)
            return
        # ...but only the gateway's own upload route takes a slot: in zero-config mode the gateway uploads to the
        # sandbox mounted inside this very process, and that inner call must not wait for a slot the outer holds.
        counted = _route_path(scope) == UPLOAD_PATH and scope.get("method") == "POST"
        if counted and self.uploads_in_flight >= self.max_concurrent_uploads:
            await _respond(
                send,
                429,
                {"success": False, "message": "Too many uploads in progress; retry shortly."},
                [(b"retry-after", str(UPLOAD_RETRY_AFTER_S).encode())],
            )
            return
        if counted:
            self.uploads_in_flight += 1
        try:
            body = await _read_body(receive, limit)
            if body is None:  # the client went away mid-body: nobody to answer
                return
            if isinstance(body, _Over):
                await _too_large(send, limit, upload=upload)
                return
            await self.app(scope, replay({"type": "http.request", "body": body, "more_body": False}, receive), send)
        finally:
            if counted:
                self.uploads_in_flight -= 1


class _Over:
    """The body went over the limit."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _read_body(receive: Receive, limit: int) -> bytes | _Over | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _Over()
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


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


async def _too_large(send: Send, limit: int, *, upload: bool) -> None:
    if upload:  # the upload endpoint answers in its own envelope, as upstream
        await _respond(send, 413, {"success": False, "message": UPLOAD_TOO_LARGE_MESSAGE})
        return
    await _respond(
        send,
        413,
        {
            "error": {
                "code": "invalid_request",
                "type": "invalid_request_error",
                "message": f"Request body too large (limit {limit} bytes).",
            }
        },
    )


async def _respond(
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
