"""The HTTP/1.1 protocol `serve` runs: uvicorn's own, with the request head (request line and headers) bounded.

Neither parser bounds a head by itself: httptools accumulates a header of any size (an 8 MB header answered 200; four
of 100 MB took two workers from 134 to 420 MB), and h11 bounds it only when told to, answering 400. A head over
MAX_HEAD_BYTES is answered 431 here, in the contract's error shape, and its connection closed, whichever parser
serves: the bound is checked on the bytes that arrive, before the app (or any ASGI middleware) sees a request,
whenever a read of the socket ends with the head still incomplete. It is approximate by a read or two (256 KiB each
under uvloop): a head that ends within the read that crosses the bound passes, as with h11's own bound, and the
httptools protocol does not see the part of a header still incomplete at the end of the head's first read. Memory
holds at most the bound and two reads either way, where a 100 MB head used to be held whole. The app never sees
such a request: no access line, no request id, one warning through uvicorn's logger, as for the 400s of
malformed requests.

Closing a connection whose client is still sending makes the kernel reset it, and a client that has not read the
answer yet loses it with the reset. So the answer is followed by the end of the stream (FIN), what still arrives is
dropped unread for LINGER_S, and only then is the connection closed, as nginx's lingering close does.

The hot path pays one dictionary lookup per read of the socket (measured: +0.1 to +0.4 µs a request, of about
12.5 µs in uvicorn's protocol; bench/head_bound_cost.py, bench/RESULTS.md).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

# A browser's headers with its cookies stay well under 16 KiB; nginx allows 4 x 8 KiB by default.
MAX_HEAD_BYTES = 64 * 1024

_BODY = json.dumps(
    {
        "error": {
            "code": "invalid_request",
            "type": "invalid_request_error",
            "message": f"Request line and headers too large (limit {MAX_HEAD_BYTES} bytes).",
        }
    }
).encode()
TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)
_WARNING = "Request head over %d bytes: answered 431 and closed."
LINGER_S = 2.0


def refuse(protocol: Any) -> None:
    """Answer 431 on the protocol's transport, end the stream, and close it LINGER_S later."""
    protocol.logger.warning(_WARNING, MAX_HEAD_BYTES)
    transport = protocol.transport
    transport.write(TOO_LARGE_RESPONSE)
    if not transport.can_write_eof():  # TLS: no half-close
        transport.close()
        return
    transport.write_eof()
    protocol.loop.call_later(LINGER_S, transport.close)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
    BoundedHttpToolsProtocol = None
else:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol, the head's bytes counted across the reads it spans.

        After each read: a head still arriving (uvicorn's scope for it has no method yet) that began in an earlier
        read counts the whole read; one that began in this read counts what the parser has handed over of it (the
        request line and the complete headers), since the read may have begun with the previous request's body or
        with pipelined requests. A request whose head ends within its first read, every ordinary one, costs a
        dictionary lookup.
        """

        _head_bytes = 0
        _head_too_large = False

        def data_received(self, data: bytes) -> None:
            if self._head_too_large:  # refused: what still arrives is dropped until the close
                return
            before = self.scope
            HttpToolsProtocol.data_received(self, data)
            scope = self.scope
            if scope is None or "method" in scope or self.transport.is_closing():
                return
            if scope is before:
                self._head_bytes += len(data)
            else:
                self._head_bytes = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._head_too_large = True
                refuse(self)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, which `serve` gives h11's own bound (`h11_max_incomplete_event_size`): over it, h11
    raises the error uvicorn answers with 400; 431 here."""

    _head_too_large = False

    def data_received(self, data: bytes) -> None:
        if not self._head_too_large:  # refused: what still arrives is dropped until the close
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > MAX_HEAD_BYTES:  # h11's buffer went over its bound: a head too large
            self._head_too_large = True
            refuse(self)
            return
        super().send_400_response(msg)


def server_options() -> dict[str, Any]:
    """uvicorn options for the bounded protocol: httptools' when installed (uvicorn's own default), else h11's."""
    protocol = "BoundedHttpToolsProtocol" if BoundedHttpToolsProtocol is not None else "BoundedH11Protocol"
    # A string, not the class: `serve --workers N` hands the options to spawned workers, which import it.
    return {"http": f"{__name__}:{protocol}", "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
