"""The stand-alone sandbox (`seedream-gateway sandbox`) logs as `serve` does: in GATEWAY_LOG_FORMAT, one access line
per request, and never the token of a capability URL (a generated file's, an upload's)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.e2e.conftest import HOST, Processes, base_env, free_port, http_client

pytestmark = pytest.mark.e2e

DEADLINE_S = 20.0


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


async def test_json_lines_without_capability_tokens(processes: Processes) -> None:
    port = free_port()
    url = f"http://{HOST}:{port}"
    sandbox = processes.start(
        ["sandbox", "--host", HOST, "--port", str(port)],
        base_env(GATEWAY_LOG_FORMAT="json"),
        ready_url=f"{url}/",
    )
    auth = {"Authorization": "Bearer sk-sandbox-logs"}
    async with http_client() as client:
        uploaded = await client.post(f"{url}/v1/uploads/images", files={"file": ("a.png", _png())}, headers=auth)
        assert uploaded.status_code == 200, uploaded.text
        upload_url = uploaded.json()["data"]["url"]
        assert (await client.get(upload_url)).status_code == 200
        created = await client.post(
            f"{url}/v1/images/generations",
            json={"model": "doubao-seedream-4-0", "prompt": "a heron"},
            headers={**auth, "X-Request-ID": "sandbox-logs-1"},
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["id"]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            task = (await client.get(f"{url}/v1/images/generations/{task_id}", headers=auth)).json()
            if task["status"] == "completed" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert task["status"] == "completed", task
        file_url = task.get("url") or task["images"][0]["url"]  # whichever result style the sandbox chose
        assert (await client.get(file_url)).status_code == 200
    sandbox.stop()  # everything written

    tokens = [urlsplit(u).path.split("/")[2] for u in (upload_url, file_url)]
    assert all(len(token) >= 16 for token in tokens), tokens
    text = sandbox.log()
    for token in tokens:
        assert token not in text, f"the sandbox logged a capability token:\n{text}"
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "app.access"]
    routes = {r["route"] for r in access}
    assert {"/files/{token}/{task_id}/{index:int}.png", "/uploads/{token}/{file_name}"} <= routes, routes
    (submit,) = [r for r in access if r.get("request_id") == "sandbox-logs-1"]
    assert submit["message"].startswith("POST /v1/images/generations 200 ")
