"""Helpers of the sandbox tests: a settable clock, a fully explicit config and clients over the ASGI transport."""

from __future__ import annotations

import io
from typing import Any

import httpx
from fastapi import FastAPI
from PIL import Image

from app.sandbox import SandboxConfig

BASE = "http://sandbox.test"
GEN = "/v1/images/generations"
KEY = "sk-test-a"
T0 = 1_700_000_000.0
LOOPBACK = ("127.0.0.1", 123)  # httpx.ASGITransport's default client address


class FakeClock:
    """A settable clock in unix seconds."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(**overrides: Any) -> SandboxConfig:
    # Every field that matters is explicit, so SANDBOX_* variables in the environment cannot change the tests.
    fields: dict[str, Any] = {
        "task_seconds": 10.0,
        "queue_seconds": 2.0,
        "hold": False,
        "fail_rate": 0.0,
        "rate_limit_rate": 0.0,
        "error_rate": 0.0,
        "timeout_rate": 0.0,
        "timeout_seconds": 0.02,
        "slow_rate": 0.0,
        "slow_factor": 5.0,
        "retry_after_seconds": 2,
        "image_long_side": 64,
        "accepted_keys": "",
        "control_token": "",
        "result_style": "result",
        "queued_status": "queued",
        "seed": 7,
        "public_base_url": "",
    }
    return SandboxConfig(**{**fields, **overrides})


def client_for(
    app: FastAPI, key: str | None = KEY, *, client: tuple[str, int] = LOOPBACK, **headers: str
) -> httpx.AsyncClient:
    """A client of `app` calling from address `client` (loopback unless told otherwise)."""
    base_headers = {"User-Agent": "sandbox-tests/1", **headers}
    if key is not None:
        base_headers["Authorization"] = f"Bearer {key}"
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url=BASE, headers=base_headers)


async def create(client: httpx.AsyncClient, prompt: str = "a lighthouse", **fields: Any) -> dict[str, Any]:
    r = await client.post(GEN, json={"model": "doubao-seedream-4-0", "prompt": prompt, **fields})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def poll(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    r = await client.get(f"{GEN}/{task_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def urls_of(task: dict[str, Any]) -> list[str]:
    if "result" in task:
        return [item["url"] for item in task["result"]["data"]]
    if "images" in task:
        return [item["url"] for item in task["images"]]
    return [task["url"]]


async def fetch_image(client: httpx.AsyncClient, url: str) -> Image.Image:
    r = await client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    image.load()
    return image


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
