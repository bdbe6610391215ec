"""Kept-results tests' helpers: the sandbox served on a real loopback socket (the gateway's copier fetches its result
links over real HTTP), and a completed task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.types import ASGIApp

from tests.fixtures.gateway import Harness
from tests.fixtures.live import serving


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` (its lifespan already run, or none) on a loopback port in this loop; yields its base URL."""
    async with serving(app) as url:
        yield url


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
