"""The public contract through the ASGI app, against the in-process sandbox."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from app.models import Task
from tests.fixtures.gateway import Harness

URL = "/v1/images/generations"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(gw: Harness, key: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = await gw.client.post(URL, headers={**bearer(key), **headers}, json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def ledger_row(gw: Harness, task_id: str) -> Task:
    async with gw.sessions() as session:
        task = (await session.execute(select(Task).where(Task.id == task_id))).scalar_one()
    return task


def assert_envelope(body: dict[str, Any], code: str | int, param: str | None = None) -> None:
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body


async def test_submit_records_task_and_forwards_documented_reading(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(
        gw,
        key,
        {
            "model": "doubao-seedream-4-0",
            "prompt": "a fox",
            "n": 3,
            "size": "16:9",
            "resolution": "1K",
            "metadata": {"optimize_prompt_options": "fast", "watermark": False},
            "client_business_id": "order-7",
        },
    )
    assert task["id"].startswith("task_img_")
    assert task["status"] == "queued" and task["progress"] == 0 and task["metadata"] == {}
    assert task["client_business_id"] == "order-7"
    row = await ledger_row(gw, task["id"])
    assert row.upstream_task_id and row.upstream_task_id != task["id"]
    assert row.upstream_key_id is not None and row.n == 3
    assert row.request["metadata"] == {
        "resolution": "1K",
        "optimize_prompt_options": {"mode": "fast"},
        "watermark": False,
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 3},
    }
    assert "resolution" not in row.request


async def test_poll_moves_through_states_and_completes(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox", "n": 2})
    gw.clock.advance(5)
    mid = (await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))).json()
    assert mid["status"] == "in_progress" and 0 < mid["progress"] < 100
    gw.clock.advance(6)
    done = (await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))).json()
    assert done["status"] == "completed" and done["progress"] == 100
    urls = [item["url"] for item in done["result"]["data"]]
    assert len(urls) == 2 and done["url"] == urls[0]
    assert done["expires_at"] == done["completed_at"] + 86400
    sandbox = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.sandbox))
    async with sandbox:
        image = await sandbox.get(urls[0])
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size[0] > 0


async def test_terminal_task_is_answered_from_the_ledger(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox"})
    gw.clock.advance(11)
    await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    before = gw.sandbox_stats()["status"]
    for _ in range(5):
        gw.clock.advance(2)
        r = await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
        assert r.json()["status"] == "completed"
    assert gw.sandbox_stats()["status"] == before


async def test_polls_within_the_refresh_interval_do_not_reach_upstream(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox"})
    gw.clock.advance(2)
    for _ in range(10):
        await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert gw.sandbox_stats()["status"] == 1
    gw.clock.advance(1)
    await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert gw.sandbox_stats()["status"] == 2


async def test_concurrent_polls_share_one_upstream_call(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox"})
    gw.clock.advance(3)
    answers = await asyncio.gather(*[gw.client.get(f"{URL}/{task['id']}", headers=bearer(key)) for _ in range(100)])
    assert {r.status_code for r in answers} == {200}
    assert gw.sandbox_stats()["status"] == 1


async def test_failed_task_is_http_200_with_error(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox [fault:fail]"})
    gw.clock.advance(11)
    r = await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "failed" and body["progress"] == 0
    assert body["error"]["code"] == "generation_failed" and "result" not in body


async def test_fewer_images_than_asked_are_reported_as_produced(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox [fault:fewer]", "n": 3})
    gw.clock.advance(11)
    body = (await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))).json()
    assert len(body["result"]["data"]) == 2


@pytest.mark.parametrize("style", ["url", "images", "result"])
async def test_every_upstream_result_shape_becomes_result_data(gw: Harness, style: str) -> None:
    gw.sandbox_config(result_style=style, queued_status="pending")
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox"})
    assert task["status"] == "queued"
    gw.clock.advance(11)
    body = (await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))).json()
    assert body["status"] == "completed" and len(body["result"]["data"]) == 1


async def test_other_tenants_task_is_indistinguishable_from_missing(gw: Harness) -> None:
    owner = await gw.new_tenant("owner")
    other = await gw.new_tenant("other")
    task = await submit(gw, owner, {"prompt": "a fox"})
    theirs = await gw.client.get(f"{URL}/{task['id']}", headers=bearer(other))
    missing = await gw.client.get(f"{URL}/task_img_does_not_exist", headers=bearer(other))
    very_long = await gw.client.get(f"{URL}/{'x' * 500}", headers=bearer(other))
    assert very_long.status_code == 404 and very_long.json() == missing.json()
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert_envelope(theirs.json(), "task_not_found")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-gw-wrong"}, {"Authorization": "Basic abc"}])
async def test_missing_or_wrong_key_is_401(gw: Harness, headers: dict[str, str]) -> None:
    r = await gw.client.post(URL, headers=headers, json={"prompt": "x"})
    assert r.status_code == 401
    assert_envelope(r.json(), "unauthorized")
    r = await gw.client.get(f"{URL}/task_img_x", headers=headers)
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 16}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "size": "5:4"}, "size"),
        ({"prompt": "x", "size": "auto"}, "size"),
        ({"prompt": "x", "n": 10, "image_urls": [f"https://img.test/{i}.png" for i in range(6)]}, "n"),
        ({"prompt": "x", "image_urls": [f"https://img.test/{i}.png" for i in range(11)]}, "image_urls"),
        ({"prompt": "x", "image_urls": ["data:image/png;base64,AAAA"]}, "image_urls"),
        ({"prompt": "x", "metadata": {"resolution": "8K"}}, "metadata.resolution"),
        ({"prompt": "x", "metadata": {"watermark": "no"}}, "metadata.watermark"),
        ({"prompt": "x", "model": "dall-e-3"}, "model"),
    ],
)
async def test_invalid_input_is_400_before_anything_is_spent(gw: Harness, body: dict[str, Any], param: str) -> None:
    key = await gw.new_tenant("acme")
    r = await gw.client.post(URL, headers=bearer(key), json=body)
    assert r.status_code == 400, r.text
    assert_envelope(r.json(), "invalid_request", param)
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert gw.sandbox_stats()["create"] == 0


async def test_malformed_json_wrong_type_and_oversized_bodies(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    json_headers = {**bearer(key), "Content-Type": "application/json"}
    r = await gw.client.post(URL, headers=json_headers, content=b'{"prompt": ')
    assert r.status_code == 400
    assert_envelope(r.json(), "invalid_request")
    r = await gw.client.post(URL, headers=json_headers, content=b"[1, 2]")
    assert r.status_code == 400
    r = await gw.client.post(URL, headers={**bearer(key), "Content-Type": "text/plain"}, content=b"prompt=x")
    assert r.status_code == 415
    assert_envelope(r.json(), "invalid_request")
    r = await gw.client.post(URL, headers=json_headers, content=b'{"prompt": "' + b"x" * 2_000_000 + b'"}')
    assert r.status_code == 413
    assert_envelope(r.json(), "invalid_request")
    assert gw.sandbox_stats()["create"] == 0


async def test_upstream_refusals_and_outages(gw: Harness) -> None:
    """Only the caller's own faults fail at once; a rate-limited or failing upstream leaves the task queued."""
    key = await gw.new_tenant("acme")
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "x [fault:429]"})
    # A 429 cools the organisation's only upstream key for its Retry-After: the task waits in the ledger.
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    limited = r.json()["id"]
    gw.clock.advance(2)
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "x [fault:content_policy]"})
    assert r.status_code == 422
    assert_envelope(r.json(), "content_policy_violation")
    r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "x [fault:500]"})
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    async with gw.sessions() as session:
        rows = {row.id: row for row in (await session.execute(select(Task))).scalars().all()}
    assert len(rows) == 3
    assert sorted(row.status for row in rows.values()) == ["failed", "waiting", "waiting"]
    assert rows[limited].next_check_at is not None and rows[limited].last_error


async def test_failed_refresh_answers_last_known_state(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    task = await submit(gw, key, {"prompt": "a fox"})
    gw.sandbox.state.sandbox.tasks.clear()  # the upstream now answers 404 for it
    gw.clock.advance(5)
    r = await gw.client.get(f"{URL}/{task['id']}", headers=bearer(key))
    assert r.status_code == 200 and r.json()["status"] == "queued"


async def test_upload_forwards_and_answers_in_upload_envelope(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    png = buffer.getvalue()
    r = await gw.client.post("/v1/uploads/images", headers=bearer(key), files={"file": ("a.png", png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["data"]["url"].startswith("http")
    assert body["data"]["size"] == len(png) and body["data"]["mime_type"] == "image/png"
    r = await gw.client.post(
        "/v1/uploads/images", headers=bearer(key), files={"file": ("a.bin", png, "application/octet-stream")}
    )
    assert r.status_code == 200 and r.json()["data"]["mime_type"] == "image/png"
    r = await gw.client.post(
        "/v1/uploads/images", headers=bearer(key), files={"file": ("a.txt", b"hello", "text/plain")}
    )
    assert r.status_code == 400 and r.json()["success"] is False
    r = await gw.client.post("/v1/uploads/images", files={"file": ("a.png", png, "image/png")})
    assert r.status_code == 401


async def test_health_and_readiness(gw: Harness) -> None:
    assert (await gw.client.get("/healthz")).json() == {"status": "ok"}
    r = await gw.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "upstream_keys": "ok"}


async def test_unknown_route_and_method_use_the_envelope(gw: Harness) -> None:
    r = await gw.client.get("/v1/nothing")
    assert r.status_code == 404
    assert set(r.json()) == {"error"}
    r = await gw.client.delete(URL)
    assert r.status_code == 405
    assert set(r.json()) == {"error"}


async def test_upstream_refusing_the_organisations_key_is_503_not_the_tenants_401(database_url: str) -> None:
    from app.sandbox.config import SandboxConfig
    from tests.fixtures.gateway import running_gateway

    async with running_gateway(database_url, sandbox_config=SandboxConfig(accepted_keys="sk-some-other-key")) as gw:
        key = await gw.new_tenant("acme", daily_images=5)
        r = await gw.client.post(URL, headers=bearer(key), json={"prompt": "a fox", "n": 2})
        # The only upstream key is disabled (an ERROR alert for ops) and no other key can take the task.
        assert r.status_code == 503
        assert_envelope(r.json(), "upstream_unavailable")
        usage = (await gw.client.get("/v1/usage", headers=bearer(key))).json()
        assert usage["day"]["used"] == 0 and usage["in_flight"]["current"] == 0
