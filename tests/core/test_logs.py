"""JSON logs and request ids: every line of a scenario is one JSON object, one request id is followed from the
inbound request to the upstream call, and no line carries a secret or a prompt."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.logs import JsonFormatter, RequestContextFilter
from app.main import create_app
from app.sandbox.app import create_sandbox_app
from app.sandbox.config import SandboxConfig
from tests.fixtures import gateway as fixture
from tests.fixtures.clock import FakeClock
from tests.fixtures.gateway import ADMIN_TOKEN, SECRET_KEY, UPSTREAM_KEY, Harness
from tests.support.served import served

URL = "/v1/images/generations"
PROMPT = "an otter holding a very private secret"


@dataclass
class Request:
    method: str
    headers: dict[str, str]


class Recording:
    """In front of the sandbox: keeps the method and headers of each request the gateway sends upstream."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner
        self.requests: list[Request] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.requests.append(Request(scope["method"], headers))
        await self.inner(scope, receive, send)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def traced(database_url: str) -> AsyncIterator[tuple[Harness, Recording]]:
    clock = FakeClock()
    sandbox = create_sandbox_app(SandboxConfig(task_seconds=10, queue_seconds=1, seed=7), clock=clock.time)
    upstream = Recording(sandbox)
    async with served(upstream) as sandbox_url:
        settings = fixture.test_settings(database_url, log_format="json", upstream_base_url=sandbox_url)
        app = create_app(settings, clock=clock.now)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        async with app.router.lifespan_context(app), client:
            yield Harness(client=client, app=app, sandbox=sandbox, clock=clock), upstream


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert lines, "nothing was logged"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    return records


async def test_one_request_id_from_the_caller_to_the_upstream(
    traced: tuple[Harness, Recording], json_lines: io.StringIO
) -> None:
    gw, upstream = traced
    key = await gw.new_tenant("acme")
    tenant_id = await gw.tenant_id(key)
    tenant = {"Authorization": f"Bearer {key}"}

    submitted = await gw.client.post(
        URL, headers={**tenant, "X-Request-ID": "trace-submit-1"}, json={"prompt": PROMPT, "n": 1}
    )
    assert submitted.status_code == 200, submitted.text
    assert submitted.headers["x-request-id"] == "trace-submit-1"
    (create,) = [r for r in upstream.requests if r.method == "POST"]
    assert create.headers["x-request-id"] == "trace-submit-1"

    # A 429 from the upstream: the pool's warning, logged inside the request, carries its id.
    limited = await gw.client.post(
        URL, headers={**tenant, "X-Request-ID": "trace-429"}, json={"prompt": f"{PROMPT} [fault:429]", "n": 1}
    )
    assert limited.status_code == 200, limited.text
    gw.clock.advance(3600)
    task_id = submitted.json()["id"]
    looked = await gw.client.get(f"{URL}/{task_id}", headers={**tenant, "X-Request-ID": "x" * 129})
    assert looked.status_code == 200
    fresh_id = looked.headers["x-request-id"]
    assert fresh_id != "x" * 129 and 0 < len(fresh_id) <= 128  # too long: replaced
    gets = [r for r in upstream.requests if r.method == "GET"]
    assert gets and all(r.headers["x-request-id"] == fresh_id for r in gets)
    for bad in ("tab\there", "é-accent", ""):
        r = await gw.client.get("/healthz", headers={"X-Request-ID": bad.encode("utf-8")})  # type: ignore[dict-item]
        assert r.headers["x-request-id"] not in (bad, "")
    refused = await gw.client.get(f"{URL}/{task_id}", headers={"Authorization": "Bearer sk-gw-wrong"})
    assert refused.status_code == 401 and refused.headers["x-request-id"]

    records = parsed(json_lines)
    access = [r for r in records if r["logger"] == "app.access"]
    (submit_line,) = [r for r in access if r.get("request_id") == "trace-submit-1"]
    assert submit_line["route"] == URL and submit_line["status"] == 200 and submit_line["method"] == "POST"
    assert submit_line["tenant_id"] == tenant_id
    assert isinstance(submit_line["duration_ms"], float)
    (status_line,) = [r for r in access if r.get("request_id") == fresh_id]
    assert status_line["route"] == f"{URL}/{{task_id}}" and status_line["task_id"] == task_id
    cooling = [r for r in records if r["logger"] == "app.upstream.pool" and r["level"] == "WARNING"]
    assert cooling and all(r.get("request_id") == "trace-429" for r in cooling), cooling
    assert any(r.get("status") == 401 and r["route"] == f"{URL}/{{task_id}}" for r in access)

    text = json_lines.getvalue()
    for secret in (key, UPSTREAM_KEY, ADMIN_TOKEN, SECRET_KEY, "sk-gw-wrong"):
        assert secret not in text, f"a log line carries a secret ({secret[:6]}...)"
    assert "otter" not in text, "a log line carries a prompt"


async def test_access_lines_redact_key_like_path_segments(
    traced: tuple[Harness, Recording], json_lines: io.StringIO
) -> None:
    """As the audit log does (`redact_key`): a key typed where an id belongs is not written out."""
    gw, _ = traced
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    upstream_key, tenant_key = "sk-org-live-0123456789abcdef", "sk-gw-0123456789abcdef"
    retired = await gw.client.delete(f"/admin/v1/upstream-keys/{upstream_key}", headers=admin)
    rotated = await gw.client.post(f"/admin/v1/keys/{tenant_key}/rotate", headers=admin)
    assert retired.status_code == 404 and rotated.status_code == 404

    records = parsed(json_lines)
    access = [r["message"] for r in records if r["logger"] == "app.access"]
    assert any(m.startswith("DELETE /admin/v1/upstream-keys/[redacted] 404 ") for m in access), access
    assert any(m.startswith("POST /admin/v1/keys/[redacted]/rotate 404 ") for m in access), access
    ours = json.dumps([r for r in records if r["logger"].startswith("app.")])  # not the test client's own lines
    assert upstream_key not in ours and tenant_key not in ours
