"""Kept results on real processes (issue 23): a gateway killed with SIGKILL in the middle of a copy leaves nothing
that a caller could be handed (nothing at the image's key, the ledger still `pending`); restarted, it copies the
image whole, and the kept copy answers after the sandbox has forgotten its files (the upstream's links dead).

The sandbox's result links point at a file server of this test (SANDBOX_PUBLIC_BASE_URL): first it sends part of a
large image and then stalls, which holds the copy mid-write; then it passes the sandbox's own files through.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from aiohttp import web
from sqlalchemy.engine import make_url

from tests.e2e.conftest import Processes, Sandbox, gateway_env, http_client, start_gateway

pytestmark = pytest.mark.e2e

DEADLINE_S = 90.0  # generous: a busy CI machine (a dead process's lease runs out after 3 s here)
STALL_AFTER = 12 * 1024 * 1024  # more than two of the store's 5 MiB parts: some of it is on disk when it stalls
PNG = b"\x89PNG\r\n\x1a\n"


class FileServer:
    """Serves `/files/...`: stalling mid-body (`stall`), or passing the sandbox's file through."""

    def __init__(self, sandbox_url: str) -> None:
        self.sandbox_url = sandbox_url
        self.stall = True
        self.stalled = asyncio.Event()
        self._release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.stall:
            async with httpx.AsyncClient(trust_env=False) as client:
                upstream = await client.get(f"{self.sandbox_url}{request.path_qs}")
            return web.Response(status=upstream.status_code, body=upstream.content, content_type="image/png")
        response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": str(4 * STALL_AFTER)})
        await response.prepare(request)
        await response.write(PNG + os.urandom(STALL_AFTER - len(PNG)))
        self.stalled.set()
        await self._release.wait()  # until the test ends: the gateway is killed meanwhile
        return response

    def close(self) -> None:
        self._release.set()


@asynccontextmanager
async def file_server(sandbox_url: str) -> AsyncIterator[FileServer]:
    server = FileServer(sandbox_url)
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.close()
        await runner.cleanup()


async def _kept_rows(database_url: str) -> list[dict[str, Any]]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT task_id, index, state, store_key, size, upstream_url FROM kept_images ORDER BY index"
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def _until(what: str, check: Any, deadline_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {deadline_s:g} s: {what}"
        await asyncio.sleep(0.2)


async def test_a_gateway_killed_mid_copy_publishes_nothing_and_copies_whole_after_restart(
    clean_postgres: str, sandbox: Sandbox, processes: Processes, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    env = gateway_env(
        clean_postgres,
        sandbox.url,
        GATEWAY_POLL_INTERVAL_S="0.3",
        GATEWAY_RESULTS_DIR=str(results),
        GATEWAY_RESULTS_ALLOW_PRIVATE="true",  # the file server is on 127.0.0.1
        GATEWAY_RESULTS_POLL_INTERVAL_S="0.3",
        GATEWAY_RESULTS_MAX_IMAGE_BYTES=str(8 * STALL_AFTER),
        GATEWAY_RESULTS_COPY_LEASE_S="3",  # the dead process's copy is taken over 3 s after its last renewal
    )
    pending = processes.spawn_tenant("keeper", env)
    first = start_gateway(processes, env, name="doomed")
    tenant = first.tenant(pending)
    async with file_server(sandbox.url) as files, http_client() as client:
        sandbox.configure(public_base_url=files.url, image_long_side=1024)
        r = await client.post(first.generations, headers=tenant.headers, json={"prompt": "a lighthouse"})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        await asyncio.wait_for(files.stalled.wait(), DEADLINE_S)  # the copy is under way, stuck mid-body
        await _until("a staging file on disk", lambda: _async(bool(_files(results))))
        os.killpg(first.process.popen.pid, signal.SIGKILL)
        first.process.popen.wait(10)

        # Nothing was published: only the store's staging file, and the ledger still says pending.
        assert all("#" in p.name for p in _files(results)), _files(results)
        [row] = await _kept_rows(clean_postgres)
        assert row["task_id"] == task_id and row["state"] == "pending" and row["store_key"] is None

        files.stall = False
        second = start_gateway(processes, env, name="restarted")
        [row] = await _until("the copy kept after the restart", lambda: _kept_if(clean_postgres))
        kept = results / row["store_key"]
        assert kept.is_file() and kept.stat().st_size == row["size"]
        answer = (await client.get(f"{second.generations}/{task_id}", headers=tenant.headers)).json()
        link = answer["result"]["data"][0]["url"]
        assert link.startswith(f"{second.url}/v1/results/{task_id}/0?")
        sandbox.reset()  # the upstream's files gone: its link is dead, the kept copy answers
        assert (await client.get(row["upstream_url"])).status_code == 404
        served = await client.get(link)
        assert served.status_code == 200 and served.content == kept.read_bytes()
        assert served.content.startswith(PNG)


async def _async(value: Any) -> Any:
    return value


async def _kept_if(database_url: str) -> list[dict[str, Any]]:
    rows = await _kept_rows(database_url)
    return rows if rows and all(r["state"] == "kept" for r in rows) else []
