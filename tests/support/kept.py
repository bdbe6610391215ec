"""Kept-results tests' helpers: the sandbox served on a real loopback socket (the gateway's copier fetches its result
links over real HTTP), and a completed task."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from tests.fixtures.gateway import Harness

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` (its lifespan already run, or none) on a loopback port in this loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await task
        finally:
            sock.close()


async def completed(gw: Harness, key: str, **body: Any) -> dict[str, Any]:
    """Submit a task, let the sandbox finish it, read it: its completed status answer."""
    headers = {"Authorization": f"Bearer {key}"}
    r = await gw.client.post("/v1/images/generations", headers=headers, json={"prompt": "a fox", **body})
    assert r.status_code == 200, r.text
    gw.clock.advance(11)
    r = await gw.client.get(f"/v1/images/generations/{r.json()['id']}", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    answer: dict[str, Any] = r.json()
    return answer
