"""The sandbox upstream over HTTP (ASGI transport), with an injected clock so no test waits for progress."""

from __future__ import annotations

import io
import re
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.contract import MAX_UPLOAD_BYTES, TaskObject, UploadResponse
from app.sandbox import create_sandbox_app
from app.sandbox.config import key_fingerprint
from app.sandbox.state import SandboxState
from tests.sandbox.support import (
    BASE,
    GEN,
    KEY,
    T0,
    FakeClock,
    client_for,
    create,
    fetch_image,
    make_config,
    png_bytes,
    poll,
    urls_of,
)


def file_url(state: SandboxState, task_id: str, index: int) -> str:
    """The capability URL of a task's image, as its completed result would give it."""
    return f"/files/{state.capability('file', task_id, str(index))}/{task_id}/{index}.png"


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.json()["service"] == "seedream-sandbox"


async def test_task_lifecycle(client: httpx.AsyncClient, clock: FakeClock) -> None:
    created = await create(client, n=3, size="16:9", client_business_id="order_1")
    assert re.fullmatch(r"img_[0-9a-f]{32}", created["id"])
    assert created == {
        "id": created["id"],
        "client_business_id": "order_1",
        "object": "generation.task",
        "model": "doubao-seedream-4-0",
        "status": "queued",
        "progress": 0,
        "created_at": int(T0),
        "metadata": {},
    }
    TaskObject.model_validate(created)

    clock.advance(1)
    assert (await poll(client, created["id"]))["status"] == "queued"
    progress = []
    for _ in range(4):
        clock.advance(2)
        task = await poll(client, created["id"])
        assert task["status"] == "in_progress"
        assert "result" not in task and "url" not in task
        progress.append(task["progress"])
    assert progress == sorted(progress) and len(set(progress)) == 4
    assert progress[0] >= 1 and progress[-1] <= 99

    clock.advance(1)
    done = await poll(client, created["id"])
    TaskObject.model_validate(done)
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["client_business_id"] == "order_1"
    assert done["completed_at"] == int(T0) + 10
    assert done["expires_at"] == done["completed_at"] + 86400
    urls = [item["url"] for item in done["result"]["data"]]
    assert len(urls) == 3 and len(set(urls)) == 3 and done["url"] == urls[0]
    assert all(u.startswith(f"{BASE}/") for u in urls)


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ("16:9", 64, (64, 36)),
        ("9:16", 64, (36, 64)),
        ("1:1", 64, (64, 64)),
        ("4:3", 64, (64, 48)),
        ("21:9", 210, (210, 90)),
        ("auto", 64, (64, 64)),
    ],
)
async def test_images_decode_with_requested_ratio(
    app: FastAPI, state: SandboxState, clock: FakeClock, size: str, long_side: int, expected: tuple[int, int]
) -> None:
    state.config = make_config(image_long_side=long_side)
    refs: dict[str, Any] = {"image_urls": ["https://example.com/ref.png"]} if size == "auto" else {}
    async with client_for(app) as client:
        task = await create(client, size=size, n=2, **refs)
        clock.advance(10)
        done = await poll(client, task["id"])
        images = [await fetch_image(client, url) for url in urls_of(done)]
    assert [im.size for im in images] == [expected, expected]
    assert images[0].format == "PNG"


async def test_files_only_while_completed_and_unexpired(
    client: httpx.AsyncClient, clock: FakeClock, state: SandboxState
) -> None:
    task = await create(client, n=1)
    url = file_url(state, task["id"], 0)
    assert (await client.get(url)).status_code == 404
    clock.advance(10)
    assert (await client.get(url)).status_code == 200
    assert (await client.get(file_url(state, task["id"], 1))).status_code == 404
    clock.advance(86400)
    missing = await client.get(url)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("style", ["result", "url", "images"])
async def test_result_styles(app: FastAPI, state: SandboxState, clock: FakeClock, style: str) -> None:
    state.config = make_config(result_style=style)
    async with client_for(app) as client:
        task = await create(client, n=2)
        clock.advance(10)
        done = await poll(client, task["id"])
        if style == "result":
            assert len(done["result"]["data"]) == 2 and done["url"] == done["result"]["data"][0]["url"]
        elif style == "url":
            assert "result" not in done and "images" not in done and done["url"].endswith("/0.png")
        else:
            assert "result" not in done and "url" not in done and len(done["images"]) == 2
        for url in urls_of(done):
            await fetch_image(client, url)


async def test_mixed_result_style_rotates(app: FastAPI, state: SandboxState, clock: FakeClock) -> None:
    state.config = make_config(result_style="mixed")
    async with client_for(app) as client:
        ids = [(await create(client))["id"] for _ in range(3)]
        clock.advance(10)
        shapes = [sorted({"result", "url", "images"} & set(await poll(client, i))) for i in ids]
    assert shapes == [["result", "url"], ["url"], ["images"]]


@pytest.mark.parametrize("queued_status", ["pending", "submitted"])
async def test_queued_status_variants(app: FastAPI, state: SandboxState, clock: FakeClock, queued_status: str) -> None:
    state.config = make_config(queued_status=queued_status)
    async with client_for(app) as client:
        task = await create(client)
        assert task["status"] == queued_status
        clock.advance(1)
        assert (await poll(client, task["id"]))["status"] == queued_status
        clock.advance(2)
        assert (await poll(client, task["id"]))["status"] == "in_progress"


async def test_failed_task_is_http_200_with_error(
    client: httpx.AsyncClient, clock: FakeClock, state: SandboxState
) -> None:
    r = await client.post(GEN, json={"prompt": "x", "client_business_id": "b-1"}, headers={"X-Sandbox-Fault": "fail"})
    task = r.json()
    assert r.status_code == 200 and task["status"] == "queued"
    clock.advance(10)
    failed = await poll(client, task["id"])
    TaskObject.model_validate(failed)
    assert failed["status"] == "failed" and failed["progress"] == 0
    assert failed["error"]["code"] == "generation_failed" and failed["error"]["message"]
    assert failed["client_business_id"] == "b-1"
    assert not {"result", "url", "images", "completed_at"} & set(failed)
    assert (await client.get(file_url(state, task["id"], 0))).status_code == 404


async def test_other_keys_task_is_404_with_numeric_code(app: FastAPI, client: httpx.AsyncClient) -> None:
    task = await create(client)
    async with client_for(app, key="sk-test-b") as other:
        for task_id in (task["id"], "img_" + "0" * 32):
            r = await other.get(f"{GEN}/{task_id}")
            assert r.status_code == 404
            assert r.json() == {"error": {"code": 404, "message": "Task not found", "type": "not_found_error"}}
    assert (await client.get(f"{GEN}/{task['id']}")).status_code == 200


async def test_unauthorized(app: FastAPI, state: SandboxState) -> None:
    expected = {"error": {"code": "unauthorized", "message": "Invalid API key", "type": "authentication_error"}}
    async with client_for(app, key=None) as anonymous:
        r = await anonymous.post(GEN, json={"prompt": "x"})
        assert r.status_code == 401 and r.json() == expected
        r = await anonymous.get(f"{GEN}/img_x", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401
    state.config = make_config(accepted_keys="sk-one, sk-two")
    async with client_for(app, key="sk-three") as unknown:
        assert (await unknown.post(GEN, json={"prompt": "x"})).status_code == 401
    async with client_for(app, key="sk-two") as known:
        assert (await known.post(GEN, json={"prompt": "x"})).status_code == 200


async def test_missing_user_agent_is_403(app: FastAPI) -> None:
    async with client_for(app) as client:
        del client.headers["User-Agent"]
        r = await client.post(GEN, json={"prompt": "x"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "size": "auto"}, "size"),
        ({"prompt": "x", "n": 10, "image_urls": [f"https://example.com/{i}.png" for i in range(6)]}, "n"),
        ({"prompt": "x", "model": "dall-e-3"}, "model"),
        ({"prompt": "x", "metadata": {"resolution": "8K"}}, "metadata.resolution"),
        ({"prompt": "x", "image_urls": ["data:image/png;base64,AAAA"]}, "image_urls"),
    ],
)
async def test_invalid_body_names_param(client: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    r = await client.post(GEN, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


async def test_missing_prompt_and_bad_json(client: httpx.AsyncClient, state: SandboxState) -> None:
    r = await client.post(GEN, json={"model": "doubao-seedream-4-0"})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "code": "invalid_request",
        "message": "The 'prompt' field is required.",
        "param": "prompt",
        "type": "invalid_request_error",
    }
    for raw in (b"{not json", b"[1, 2]"):
        r = await client.post(GEN, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert state.stats.calls["invalid"] == 3 and not state.tasks


def assert_rate_limited(r: httpx.Response, category: str) -> None:
    assert r.status_code == 429
    assert r.json() == {"error": {"code": "rate_limit_exceeded", "message": "Async task request rate exceeded"}}
    assert r.headers["Retry-After"] == "2"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["X-RateLimit-Category"] == category
    assert int(r.headers["X-RateLimit-Limit"]) > 0
    assert int(r.headers["X-RateLimit-Reset"]) == int(T0) + 2


def fault_request(how: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A create body and headers that ask for fault `name` by header or by prompt marker."""
    if how == "header":
        return {"prompt": "a cat", "n": 3}, {"X-Sandbox-Fault": name}
    return {"prompt": f"a cat [fault:{name}] on a mat", "n": 3}, {}


BY = pytest.mark.parametrize("how", ["header", "prompt"])


@BY
async def test_fault_429(client: httpx.AsyncClient, state: SandboxState, how: str) -> None:
    body, headers = fault_request(how, "429")
    assert_rate_limited(await client.post(GEN, json=body, headers=headers), "async_submit")
    assert not state.tasks and state.stats.faults["429"] == 1


@BY
async def test_fault_500(client: httpx.AsyncClient, how: str) -> None:
    body, headers = fault_request(how, "500")
    r = await client.post(GEN, json=body, headers=headers)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


@BY
async def test_fault_content_policy(client: httpx.AsyncClient, how: str) -> None:
    body, headers = fault_request(how, "content_policy")
    r = await client.post(GEN, json=body, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "content_policy_violation"


@BY
async def test_fault_timeout_hangs_then_answers(client: httpx.AsyncClient, how: str) -> None:
    body, headers = fault_request(how, "timeout")
    started = time.perf_counter()
    r = await client.post(GEN, json=body, headers=headers)
    assert time.perf_counter() - started >= 0.02
    assert r.status_code == 200 and r.json()["status"] == "queued"


@BY
async def test_fault_fail(client: httpx.AsyncClient, clock: FakeClock, how: str) -> None:
    body, headers = fault_request(how, "fail")
    task = (await client.post(GEN, json=body, headers=headers)).json()
    clock.advance(10)
    assert (await poll(client, task["id"]))["status"] == "failed"


@BY
async def test_fault_slow(client: httpx.AsyncClient, clock: FakeClock, how: str) -> None:
    body, headers = fault_request(how, "slow")
    task = (await client.post(GEN, json=body, headers=headers)).json()
    clock.advance(10)
    assert (await poll(client, task["id"]))["status"] == "in_progress"
    clock.advance(40)
    assert (await poll(client, task["id"]))["status"] == "completed"


@BY
async def test_fault_fewer(client: httpx.AsyncClient, clock: FakeClock, how: str) -> None:
    body, headers = fault_request(how, "fewer")
    three = (await client.post(GEN, json=body, headers=headers)).json()
    one = (await client.post(GEN, json={**body, "n": 1}, headers=headers)).json()
    clock.advance(10)
    assert len(urls_of(await poll(client, three["id"]))) == 2
    assert len(urls_of(await poll(client, one["id"]))) == 1


async def test_faults_on_status_calls(client: httpx.AsyncClient) -> None:
    task = await create(client)
    url = f"{GEN}/{task['id']}"
    assert_rate_limited(await client.get(url, headers={"X-Sandbox-Fault": "429"}), "async_query")
    r = await client.get(url, headers={"X-Sandbox-Fault": "500"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    started = time.perf_counter()
    r = await client.get(url, headers={"X-Sandbox-Fault": "timeout"})
    assert time.perf_counter() - started >= 0.02 and r.status_code == 200
    # Faults that only shape a new task are ignored on a status call.
    assert (await client.get(url, headers={"X-Sandbox-Fault": "fail"})).status_code == 200


async def test_unknown_fault_header_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(GEN, json={"prompt": "x"}, headers={"X-Sandbox-Fault": "explode"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Sandbox-Fault"


@pytest.mark.parametrize(
    ("rate_field", "expect"),
    [("rate_limit_rate", 429), ("error_rate", 500), ("fail_rate", "failed"), ("slow_rate", "in_progress")],
)
async def test_config_rates(
    app: FastAPI, state: SandboxState, clock: FakeClock, rate_field: str, expect: int | str
) -> None:
    state.config = make_config(**{rate_field: 1.0})
    async with client_for(app) as client:
        r = await client.post(GEN, json={"prompt": "x"})
        if isinstance(expect, int):
            assert r.status_code == expect
            if expect == 429:
                assert r.headers["Retry-After"] == "2"
            return
        clock.advance(10)
        assert (await poll(client, r.json()["id"]))["status"] == expect


async def test_timeout_rate(app: FastAPI, state: SandboxState) -> None:
    state.config = make_config(timeout_rate=1.0)
    async with client_for(app) as client:
        started = time.perf_counter()
        assert (await client.post(GEN, json={"prompt": "x"})).status_code == 200
    assert time.perf_counter() - started >= 0.02


async def test_request_fault_wins_over_config(app: FastAPI, state: SandboxState, clock: FakeClock) -> None:
    state.config = make_config(error_rate=1.0)
    async with client_for(app) as client:
        r = await client.post(GEN, json={"prompt": "x"}, headers={"X-Sandbox-Fault": "fewer"})
        assert r.status_code == 200


async def test_seeded_rates_are_reproducible(clock: FakeClock) -> None:
    async def outcomes() -> list[int]:
        app = create_sandbox_app(make_config(error_rate=0.5, seed=42), clock=clock)
        async with client_for(app) as client:
            return [(await client.post(GEN, json={"prompt": "x"})).status_code for _ in range(20)]

    first = await outcomes()
    assert first == await outcomes()
    assert set(first) == {200, 500}


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), (10, 20, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "mime", "ext"), [(png_bytes(), "image/png", "png"), (jpeg_bytes(), "image/jpeg", "jpg")]
)
async def test_upload_and_serve_back(client: httpx.AsyncClient, data: bytes, mime: str, ext: str) -> None:
    r = await client.post(
        "/v1/uploads/images", files={"file": (f"ref.{ext}", data, mime)}, data={"purpose": "generation"}
    )
    assert r.status_code == 200, r.text
    body = UploadResponse.model_validate(r.json())
    assert body.success and body.message == "" and body.data is not None
    assert re.fullmatch(r"upload_[0-9a-f]+", body.data.id)
    assert body.data.mime_type == mime and body.data.size == len(data)
    assert body.data.url.startswith(f"{BASE}/uploads/") and body.data.url.endswith(f".{ext}")
    served = await client.get(body.data.url)
    assert served.status_code == 200 and served.content == data and served.headers["content-type"] == mime


async def test_upload_errors(client: httpx.AsyncClient) -> None:
    too_large = b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD_BYTES
    r = await client.post("/v1/uploads/images", files={"file": ("big.png", too_large, "image/png")})
    assert r.status_code == 413
    assert r.json() == {"success": False, "message": "Image too large. Maximum size is 10MB"}

    r = await client.post("/v1/uploads/images", files={"file": ("notes.txt", b"hello", "image/png")})
    assert r.status_code == 400 and r.json()["success"] is False and "Unsupported" in r.json()["message"]

    r = await client.post("/v1/uploads/images", data={"purpose": "generation"})
    assert r.status_code == 400 and r.json()["success"] is False


@pytest.mark.parametrize("mount_name", [None, "sandbox"])
async def test_mounted_under_prefix(clock: FakeClock, mount_name: str | None) -> None:
    sandbox = create_sandbox_app(make_config(), clock=clock)
    gateway = FastAPI()
    gateway.mount("/_sandbox", sandbox, name=mount_name)
    async with client_for(gateway) as client:
        r = await client.post(f"/_sandbox{GEN}", json={"prompt": "x", "n": 2, "size": "9:16"})
        assert r.status_code == 200
        clock.advance(10)
        done = (await client.get(f"/_sandbox{GEN}/{r.json()['id']}")).json()
        urls = urls_of(done)
        assert len(urls) == 2 and all(u.startswith(f"{BASE}/_sandbox/files/") for u in urls)
        assert (await fetch_image(client, urls[0])).size == (36, 64)

        upload = await client.post("/_sandbox/v1/uploads/images", files={"file": ("a.png", png_bytes())})
        url = upload.json()["data"]["url"]
        assert url.startswith(f"{BASE}/_sandbox/uploads/")
        assert (await client.get(url)).content == png_bytes()


async def test_control_endpoints(app: FastAPI, client: httpx.AsyncClient, clock: FakeClock) -> None:
    task = await create(client)
    await poll(client, task["id"])
    await poll(client, task["id"])
    async with client_for(app, key="sk-other") as other:
        await create(other)
    stats = (await client.get("/_control/stats")).json()
    assert stats["create"] == 2 and stats["status"] == 2 and stats["tasks"] == 2
    # Keys only as fingerprints: the stats never echo a caller's key.
    assert stats["by_key"] == {
        key_fingerprint(KEY): {"create": 1, "status": 2},
        key_fingerprint("sk-other"): {"create": 1},
    }
    assert stats["status_by_task"] == {task["id"]: 2}

    r = await client.patch("/_control/config", json={"task_seconds": 0, "queued_status": "pending"})
    assert r.status_code == 200 and r.json()["task_seconds"] == 0
    assert (await client.get("/_control/config")).json()["queued_status"] == "pending"
    instant = await create(client)
    assert instant["status"] == "pending"
    assert (await poll(client, instant["id"]))["status"] == "completed"
    # Tasks created before the change keep their own timings.
    assert (await poll(client, task["id"]))["status"] == "queued"

    bad = await client.patch("/_control/config", json={"fail_rate": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "fail_rate"
    bad = await client.patch("/_control/config", json={"nope": 1})
    assert bad.status_code == 400

    assert (await client.post("/_control/reset")).status_code == 200
    stats = (await client.get("/_control/stats")).json()
    assert stats["create"] == 0 and stats["tasks"] == 0 and stats["by_key"] == {}
    assert (await client.get(f"{GEN}/{task['id']}")).status_code == 404


async def test_unknown_route_uses_error_envelope(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_expired_tasks_are_forgotten() -> None:
    from app.sandbox.state import FORGET_CHECK_EVERY
    from app.sandbox.tasks import new_task

    now = [1_790_000_000.0]
    state = SandboxState(config=make_config(task_seconds=1), clock=lambda: now[0])
    config = state.config
    for _ in range(FORGET_CHECK_EVERY):
        task = new_task(
            owner="k",
            model="m",
            size="1:1",
            n=1,
            client_business_id=None,
            faults=set(),
            config=config,
            result_style="result",
            now=now[0],
        )
        state.tasks[task.id] = task
    fresh = new_task(
        owner="k",
        model="m",
        size="1:1",
        n=1,
        client_business_id=None,
        faults=set(),
        config=config,
        result_style="result",
        now=now[0] + 2 * 86400,
    )
    now[0] += 2 * 86400
    state.forget_expired()
    state.tasks[fresh.id] = fresh
    assert list(state.tasks) == [fresh.id]
