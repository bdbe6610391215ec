"""Frontends without a tenant key, in a real browser (issue 21): headless Chromium against the zero-config `serve`
(a real process: the built-in sandbox, the demo tenant, the try-it page at `/`).

- The try-it page: a prompt with two images; the progress changes over the event stream; two images render; no
  console error, no request to another host.
- examples/frontend (a team's backend that mints on the server) on another origin, which the demo tenant allows
  (CORS per tenant): its page generates an image through the gateway with the token alone. The same backend
  serving its page from an origin its tokens were not minted for: the gateway refuses it (403 origin_not_allowed)
  and nothing is submitted.

Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page

from tests.e2e.conftest import Processes, base_env
from tests.fixtures.browser import watched_page
from tests.fixtures.databases import truncate_all
from tests.support.processes import HOST, free_port

DEADLINE_S = 60.0  # a deadline, not an expectation: a busy 2-core machine
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "frontend" / "server.py"


@pytest.fixture(scope="module")
def demo(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The zero-config `serve` (no upstream configured: the sandbox inside it), on the test database: its URL, admin
    token and the demo tenant's key."""
    truncate_all(postgres_database)
    processes = Processes(tmp_path_factory.mktemp("frontends"))
    port = free_port()
    admin = "adm-browser-" + secrets.token_urlsafe(16)
    env = base_env(
        GATEWAY_DATABASE_URL=postgres_database,
        GATEWAY_ADMIN_TOKEN=admin,
        GATEWAY_SECRET_KEY=secrets.token_urlsafe(32),
        GATEWAY_DATA_DIR=str(processes.logs_dir / "data"),
        GATEWAY_EVENTS_POLL_INTERVAL_S="0.2",
        GATEWAY_STATUS_REFRESH_INTERVAL_S="0.2",
        SANDBOX_TASK_SECONDS="3",  # long enough for the progress to be seen moving
        SANDBOX_QUEUE_SECONDS="0.5",
    )
    try:
        processes.start(["serve", "--host", HOST, "--port", str(port)], env, ready_url=f"http://{HOST}:{port}/healthz")
        key = json.loads((processes.logs_dir / "data" / "demo-tenant.json").read_text())["key"]
        yield {"url": f"http://{HOST}:{port}", "admin": admin, "key": key}
    finally:
        processes.close()


async def until(page: Page, condition: str) -> None:
    """Poll a JavaScript expression in the page until it is true, against the deadline. (Playwright's own
    wait_for_function evaluates a string inside the page, which the try-it page's CSP forbids, rightly.)"""
    deadline = time.monotonic() + DEADLINE_S
    while not await page.evaluate(condition):
        assert time.monotonic() < deadline, f"never true: {condition}"
        await asyncio.sleep(0.1)


async def test_the_try_it_page_generates_two_images_over_the_event_stream(
    demo: dict[str, str], browser: Browser
) -> None:
    watched = await watched_page(browser)
    page = watched.page
    await page.goto(demo["url"] + "/")
    await page.fill("#prompt", "a red fox in the snow, two views")
    await page.select_option("#size", "16:9")
    await page.select_option("#n", "2")
    await page.click("#submit")
    await until(
        page,
        "document.querySelectorAll('#images img').length === 2"
        " && [...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth > 0)",
    )
    events = await page.eval_on_selector_all(
        "#events li", "items => items.map(i => [i.dataset.status, Number(i.dataset.progress)])"
    )
    await watched.screenshot("try-page-two-images")
    assert events[0][0] == "queued" and events[-1] == ["completed", 100], events
    assert len({progress for _, progress in events}) >= 2, f"the progress never changed: {events}"
    sizes = await page.eval_on_selector_all(
        "#images img", "images => images.map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) == 2 and all(w > 0 and h > 0 for w, h in sizes), sizes
    assert await page.text_content("#status") == "completed"
    assert await page.is_hidden("#error")
    watched.assert_clean()
    assert any(url.endswith("/page/token") for url in watched.requests)
    assert any("/events" in url for url in watched.requests)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("frontend_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _backend(demo: dict[str, str], port: int, origin: str | None = None) -> Iterator[str]:
    """examples/frontend/server.py on `port` (its tokens minted for `origin`: by default its own), in a thread."""
    server = _example().make_server(port, demo["url"], demo["key"], origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def _admin(demo: dict[str, str], method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        r = await client.request(
            method, f"{demo['url']}/admin/v1{path}", headers={"Authorization": f"Bearer {demo['admin']}"}, **kwargs
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _images_of_the_day(demo: dict[str, str]) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        r = await client.get(f"{demo['url']}/v1/usage", headers={"Authorization": f"Bearer {demo['key']}"})
    used: int = r.json()["day"]["used"]
    return used


async def _generate(page: Page, url: str) -> None:
    await page.goto(url + "/")
    await page.select_option("#n", "1")
    await page.click("button")


async def test_a_team_backends_page_works_from_its_origin_and_is_refused_from_another(
    demo: dict[str, str], browser: Browser
) -> None:
    allowed_port, other_port = free_port(), free_port()
    allowed, other = f"http://{HOST}:{allowed_port}", f"http://{HOST}:{other_port}"
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        me = await client.get(f"{demo['url']}/v1/usage", headers={"Authorization": f"Bearer {demo['key']}"})
    tenant_id = me.json()["tenant_id"]
    # The demo tenant's pages may read its answers from both origins (CORS per tenant): whatever refuses the second
    # page is the token's origin rule, and the page can read why.
    await _admin(demo, "PATCH", f"/tenants/{tenant_id}", json={"cors_origins": [allowed, other]})

    with _backend(demo, allowed_port) as url:
        watched = await watched_page(browser)
        await _generate(watched.page, url)
        await until(
            watched.page,
            "document.querySelectorAll('#images img').length === 1"
            " && document.querySelector('#images img').complete"
            " && document.querySelector('#images img').naturalWidth > 0",
        )
        await watched.screenshot("frontend-example-allowed-origin")
        assert await watched.page.text_content("#status") == "completed 100%"
        watched.assert_clean()

    before = await _images_of_the_day(demo)
    # The same backend, its page now served from an origin its tokens are not minted for.
    with _backend(demo, other_port, origin=allowed) as url:
        watched = await watched_page(browser)
        await _generate(watched.page, url)
        await until(watched.page, "document.querySelector('#status').textContent.startsWith('403')")
        await watched.screenshot("frontend-example-refused-origin")
        status = await watched.page.text_content("#status") or ""
        assert status.startswith("403 origin_not_allowed") and other in status, status
        assert not await watched.page.query_selector_all("#images img")
        assert not watched.refused and not watched.page_errors
    assert await _images_of_the_day(demo) == before, "the refused page's submit was counted"
