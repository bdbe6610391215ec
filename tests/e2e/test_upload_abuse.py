"""Issue 19, items 4 to 7, on the real `serve --workers 2` over real sockets, as the attacker ran it.

4. Slow bodies: an upload's caller is authenticated from its headers before a byte of its body is read, so anonymous
   bodies trickling at 1 byte/s hold no upload slot; slots are per tenant, so one tenant's trickles leave the others
   theirs; and a body behind the minimum pace is answered 408 and closed.
5. The upload limit belongs to the upload route alone: a path that merely ends like it gets the small limit before
   its body is read.
6. A request head over the bound is answered 431 in the error shape, and costs the workers no memory.
7. Concurrent 10 MB uploads are streamed from disk to the upstream: a worker's memory barely moves.

One gateway for the module (each process start is seconds of imports): every test uses tenants of its own, and
ends its slow connections before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.core.http_protocol import MAX_HEAD_BYTES
from tests.e2e.conftest import (
    HOST,
    Gateway,
    Process,
    Processes,
    Sandbox,
    free_port,
    gateway_env,
    http_client,
)
from tests.fixtures.databases import create_postgres_database, drop_postgres_database, migrated

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process table from /proc"),
]

WORKERS = 2
# Deadlines, generous for a busy CI machine; none is a expectation of speed.
START_TIMEOUT_S = 90.0
ANSWER_TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 120.0
STARTED = "Application startup complete."
UPLOAD = "/v1/uploads/images"
TEN_MB = 10 * 1024 * 1024
BOUNDARY = "abuse-boundary"


def image(size: int) -> bytes:
    """`size` bytes that sniff as a PNG."""
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + secrets.token_bytes(size - len(signature))


# --- the gateway ----------------------------------------------------------------------------------------------------


@dataclass
class Served:
    gateway: Gateway
    admin_token: str
    workers: list[int]

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def tenant_key(self, name: str) -> str:
        """A new tenant's key, through the admin API (many tenants in a moment; the CLI costs seconds each)."""
        async with http_client() as client:
            r = await client.post(
                f"{self.url}/admin/v1/tenants",
                headers={"Authorization": f"Bearer {self.admin_token}"},
                json={"name": f"{name}-{secrets.token_hex(4)}"},
            )
        assert r.status_code == 201, r.text
        key: str = r.json()["key"]["key"]
        return key

    def rss_mib(self) -> dict[int, float]:
        return {pid: _rss_mib(pid) for pid in self.workers}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def served(postgres_server: str, sandbox_process: Process, module_processes: Processes) -> Iterator[Served]:
    """`serve --workers 2` on a PostgreSQL database of its own, in front of the module's sandbox."""
    database_url = migrated(create_postgres_database(postgres_server, prefix="gw_abuse"))
    try:
        env = gateway_env(database_url, sandbox_process.base_url)
        port = free_port()
        process = module_processes.start(
            ["serve", "--host", HOST, "--port", str(port), "--workers", str(WORKERS)],
            env,
            ready_url=f"http://{HOST}:{port}/healthz",
            name="serve-abuse",
            timeout_s=START_TIMEOUT_S,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(_children(process.popen.pid)) < WORKERS or process.log().count(STARTED) < WORKERS:
            if time.monotonic() > deadline:
                pytest.fail(f"{WORKERS} workers not started; log tail:\n{process.tail()}")
            time.sleep(0.1)
        gateway = Gateway(process, env, module_processes)
        yield Served(gateway, env["GATEWAY_ADMIN_TOKEN"], _children(process.popen.pid))
        process.stop()
    finally:
        drop_postgres_database(database_url)


@pytest.fixture
def gateway(served: Served, sandbox: Sandbox) -> Served:
    """The module's gateway, its sandbox reset (uploads are kept in the sandbox's memory)."""
    if served.gateway.process.popen.poll() is not None:
        pytest.fail(f"the gateway exited; log tail:\n{served.gateway.process.tail()}")
    return served


# --- raw connections ------------------------------------------------------------------------------------------------


@dataclass
class Connection:
    """A request sent by hand: its head at once, then its body a byte a second (or not at all)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    trickle: asyncio.Task[None] | None = None
    answer: bytes = b""

    async def status(self, timeout_s: float = ANSWER_TIMEOUT_S) -> int:
        """The status of the answer, its head and body read into `answer` (0: none within timeout_s)."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout_s)
        except TimeoutError:
            return 0
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        self.answer = head + await asyncio.wait_for(self.reader.readexactly(length), ANSWER_TIMEOUT_S)
        return int(head.split()[1])

    async def closed_by_server(self, timeout_s: float = ANSWER_TIMEOUT_S) -> bool:
        """Whether the server closes the connection (within timeout_s) once it has answered."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.reader.read(), timeout_s) == b""
        return False

    def close(self) -> None:
        if self.trickle is not None:
            self.trickle.cancel()
        self.writer.close()


@dataclass
class Connections:
    port: int
    opened: list[Connection] = field(default_factory=list)

    async def open(self, head: bytes, first: bytes = b"", *, trickle: bool = True) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, self.port)
        writer.write(head + first)
        await writer.drain()
        connection = Connection(reader, writer)
        if trickle:
            connection.trickle = asyncio.create_task(_trickle(writer))
        self.opened.append(connection)
        return connection


async def _trickle(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while not writer.is_closing():
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def connections(gateway: Served) -> AsyncIterator[Connections]:
    opened = Connections(gateway.port)
    try:
        yield opened
    finally:
        for connection in opened.opened:
            connection.close()


def upload_head(length: int, key: str | None = None, path: str = UPLOAD) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {length}",
    ]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# The start of a multipart body whose file part then trickles: the parser is busy with it, not refusing it.
PREAMBLE = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode() + b"\x89PNG\r\n\x1a\n"


async def upload(client: httpx.AsyncClient, gateway: Served, key: str, content: bytes) -> httpx.Response:
    return await client.post(
        f"{gateway.url}{UPLOAD}",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("a.png", content, "image/png")},
        timeout=UPLOAD_TIMEOUT_S,
    )


async def uploads_two_at_a_time(gateway: Served, key: str, count: int, size: int = 64 * 1024) -> list[int]:
    """`count` uploads by one tenant, two at a time (within a tenant's slots on one worker), each on a new
    connection; their statuses."""
    content = image(size)
    statuses: list[int] = []

    async def one() -> None:
        async with http_client() as client:
            statuses.append((await upload(client, gateway, key, content)).status_code)

    for _ in range(count // 2):
        await asyncio.gather(one(), one())
    if count % 2:
        await one()
    return statuses


# --- memory ---------------------------------------------------------------------------------------------------------


class Peaks:
    """The highest VmRSS of each worker, read every 10 ms in a thread while the block runs."""

    def __init__(self, gateway: Served) -> None:
        self.gateway = gateway
        self.before = gateway.rss_mib()
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, mib in self.gateway.rss_mib().items():
                self.peak[pid] = max(self.peak[pid], mib)
            time.sleep(0.01)

    def growth(self) -> dict[int, float]:
        return {pid: round(self.peak[pid] - self.before[pid], 1) for pid in self.before}

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- 4. slow bodies -------------------------------------------------------------------------------------------------


async def test_anonymous_slow_bodies_hold_no_upload_slot(gateway: Served) -> None:
    key = await gateway.tenant_key("uploader")
    async with connections(gateway) as opened:
        # Twice the slots of both workers, each trickling a 10 MB body at 1 byte/s without a key.
        anonymous = [await opened.open(upload_head(TEN_MB), PREAMBLE) for _ in range(4 * 8)]
        answers = asyncio.gather(*(c.status() for c in anonymous))
        # While they trickle, every authenticated upload goes through (on main: 29 of 29 were 429).
        assert await uploads_two_at_a_time(gateway, key, 29) == [200] * 29
        # Each was refused from its headers, its body unread (on main, each took a slot and read on).
        assert await answers == [401] * len(anonymous)


async def test_one_tenants_slow_uploads_take_only_its_own_slots(gateway: Served) -> None:
    hog, other = await gateway.tenant_key("hog"), await gateway.tenant_key("other")
    async with connections(gateway) as opened:
        # Six slow uploads of one tenant: it has two slots per worker, so at least two are refused at once.
        slow = [await opened.open(upload_head(TEN_MB, hog), PREAMBLE) for _ in range(6)]
        refused = 0
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while refused < 2:
            assert time.monotonic() < deadline, f"{refused} of the hog's 6 slow uploads refused"
            answers = await asyncio.gather(*(c.status(timeout_s=0.5) for c in slow if not c.answer))
            refused += answers.count(429)
            assert set(answers) <= {0, 429, 408}, answers  # the admitted ones trickle on (408 after the grace)
        # The others' uploads are untouched: the hog holds at most two of each worker's eight slots.
        assert await uploads_two_at_a_time(gateway, other, 8) == [200] * 8


async def test_an_upload_behind_the_minimum_pace_is_408_and_closed(gateway: Served) -> None:
    key = await gateway.tenant_key("slowpoke")
    async with connections(gateway) as opened:
        slow = [await opened.open(upload_head(TEN_MB, key), PREAMBLE) for _ in range(2)]
        started = time.monotonic()
        statuses = await asyncio.gather(*(c.status() for c in slow))
        assert statuses == [408, 408], statuses  # on main: no answer at all while the trickle lasts
        for connection in slow:
            assert b"connection: close" in connection.answer.lower()
            assert b'"success":false' in connection.answer
            assert await connection.closed_by_server()
        assert time.monotonic() - started < ANSWER_TIMEOUT_S
    # Its slots are free again.
    assert await uploads_two_at_a_time(gateway, key, 2) == [200, 200]


# --- 5. the upload limit is the upload route's ----------------------------------------------------------------------


async def test_a_path_ending_like_the_upload_route_gets_the_small_limit(gateway: Served) -> None:
    async with connections(gateway) as opened:
        # Declared: refused from the headers, no body sent at all (on main: it waited for 10 MB).
        declared = await opened.open(upload_head(TEN_MB, path="/x" + UPLOAD), trickle=False)
        assert await declared.status() == 413, declared.answer
        assert b'"message": "Request body too large (limit 1048576 bytes)."' in declared.answer

    body = image(TEN_MB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    async def chunked() -> httpx.Response:
        async with http_client(timeout=UPLOAD_TIMEOUT_S) as client:
            return await client.post(f"{gateway.url}/x{UPLOAD}", content=chunks())

    # 16 anonymous chunked 10 MB bodies at once: each refused after the small limit, none buffered whole.
    with Peaks(gateway) as peaks:
        answers = await asyncio.gather(*(chunked() for _ in range(16)))
    for r in answers:
        assert r.status_code == 413, r.text
        assert r.json()["error"] == {
            "code": "invalid_request",
            "type": "invalid_request_error",
            "message": "Request body too large (limit 1048576 bytes).",
        }
    assert all(growth < 64 for growth in peaks.growth().values()), peaks.growth()


# --- 6. request heads -----------------------------------------------------------------------------------------------


async def _send_head(gateway: Served, header_bytes: int) -> bytes:
    """A GET with one header of `header_bytes`, sent as fast as the server takes it, while its answer is read; the
    answer (the server ends the stream after it: `Connection: close` for one it serves, its own for one it refuses)."""
    reader, writer = await asyncio.open_connection(HOST, gateway.port)
    answer = bytearray()

    async def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Big: ")
        piece = b"a" * (1024 * 1024)
        with contextlib.suppress(OSError):  # the server stops reading once the head is over the bound
            for start in range(0, header_bytes, len(piece)):
                if reading.done():
                    break
                writer.write(piece[: min(len(piece), header_bytes - start)])
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
        await asyncio.wait_for(reading, ANSWER_TIMEOUT_S)
    finally:
        reading.cancel()
        writer.close()
    return bytes(answer)


async def test_a_request_head_over_the_bound_is_431_in_the_error_shape(gateway: Served) -> None:
    under = await _send_head(gateway, MAX_HEAD_BYTES - 1024)
    assert under.startswith(b"HTTP/1.1 200 "), under[:200]
    answer = await _send_head(gateway, 8 * 1024 * 1024)  # on main: 200
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"connection: close" in head.lower()
    assert b'"type": "invalid_request_error"' in body and b'"code": "invalid_request"' in body
    # Four anonymous 100 MB heads at once cost the workers nothing (on main: from 134 to 420 MB).
    with Peaks(gateway) as peaks:
        answers = await asyncio.gather(*(_send_head(gateway, 100 * 1024 * 1024) for _ in range(4)))
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), [a[:100] for a in answers]
    assert all(growth < 32 for growth in peaks.growth().values()), peaks.growth()


# --- 7. memory under legitimate uploads -----------------------------------------------------------------------------


async def test_concurrent_10_mb_uploads_barely_move_a_workers_memory(gateway: Served) -> None:
    keys = [await gateway.tenant_key(f"bulk-{i}") for i in range(16)]
    content = image(TEN_MB)

    async def one(key: str) -> int:
        async with http_client() as client:
            return (await upload(client, gateway, key, content)).status_code

    # 16 at once, one tenant each: 8 per worker at most (the kernel picks the worker), the rest 429.
    with Peaks(gateway) as peaks:
        statuses = await asyncio.gather(*(one(key) for key in keys))
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8, statuses
    # On main a worker held several copies of each body: ~350 MB more at the peak, ~100 MB of it kept.
    assert all(growth < 100 for growth in peaks.growth().values()), peaks.growth()
