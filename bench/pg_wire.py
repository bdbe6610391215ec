"""A PostgreSQL proxy that counts what its clients send: round trips, statements and transactions.

bench/hot_path.py points a gateway at it to measure the database work per request, whatever the gateway's version
(nothing in the app is instrumented). It reads the frontend messages of the wire protocol (v3): after the untyped
SSLRequest / StartupMessage, every message is a type byte and a 4-byte length. Counted:

- a round trip: a `Sync` (end of an extended-protocol exchange, what asyncpg sends per statement) or a simple
  `Query` (what asyncpg sends for BEGIN, COMMIT and ROLLBACK);
- a statement: an `Execute`, or a simple `Query` other than transaction control;
- a transaction: a simple `Query` starting with BEGIN.

The proxy runs its own event loop in a daemon thread; `snapshot()` reads the counters from any thread.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from typing import Any

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_TX_CONTROL = (b"BEGIN", b"COMMIT", b"ROLLBACK", b"START TRANSACTION", b"END", b"SAVEPOINT", b"RELEASE")


class CountingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-wire-proxy", daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting proxy did not start")
        return self

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        back = asyncio.create_task(_pipe(server_reader, client_writer))
        try:
            await self._forward(client_reader, server_writer, client_writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            server_writer.close()
            back.cancel()
            client_writer.close()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        # Untyped start: an SSLRequest / GSSENCRequest, which the proxy itself declines ("N": go on in plain text, so
        # the stream stays readable), then the StartupMessage, forwarded.
        while True:
            header = await reader.readexactly(4)
            (length,) = struct.unpack("!I", header)
            body = await reader.readexactly(length - 4)
            code = struct.unpack("!I", body[:4])[0] if len(body) >= 4 else 0
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                client.write(b"N")
                continue
            writer.write(header + body)
            break
        while True:
            kind = await reader.readexactly(1)
            header = await reader.readexactly(4)
            (length,) = struct.unpack("!I", header)
            body = await reader.readexactly(length - 4)
            writer.write(kind + header + body)
            self._count(kind, body)

    def _count(self, kind: bytes, body: bytes) -> None:
        with self._lock:
            if kind == b"S":
                self._counts["round_trips"] += 1
            elif kind == b"E":
                self._counts["statements"] += 1
            elif kind == b"Q":
                self._counts["round_trips"] += 1
                text = body.rstrip(b"\x00").lstrip().upper()
                if text.startswith(b"BEGIN") or text.startswith(b"START TRANSACTION"):
                    self._counts["transactions"] += 1
                elif not text.startswith(_TX_CONTROL):
                    self._counts["statements"] += 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, Any]:
    return {name: after.get(name, 0) - before.get(name, 0) for name in ("round_trips", "statements", "transactions")}
