"""The gateway as ops run it: `sandbox`, `migrate`, `serve` and `tenants create` as real processes, over sockets."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import (
    HOST,
    UPSTREAM_KEY,
    Gateway,
    Process,
    Processes,
    Sandbox,
    Tenant,
    base_env,
    free_port,
    gateway_env,
    http_client,
    start_gateway,
)
from tests.fixtures.databases import create_postgres_database, drop_postgres_database

pytestmark = pytest.mark.e2e

MODEL = "doubao-seedream-4-0"
TERMINAL = ("completed", "failed")
TASK_DEADLINE_S = 20.0
POLL_S = 0.1
KEY_PATTERN = re.compile(r"Tenant key:\s+(sk-gw-[A-Za-z0-9_-]+)")


def body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **extra}


def assert_envelope(response: httpx.Response, status: int, code: str | int | None = None) -> dict[str, Any]:
    """The upstream's error envelope `{"error": {"code", "message", ...}}` with the given HTTP status."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    payload = response.json()
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert isinstance(error, dict), payload
    assert isinstance(error.get("code"), str | int), payload
    assert isinstance(error.get("message"), str) and error["message"], payload
    if code is not None:
        assert error["code"] == code, payload
    return error


async def submit(client: httpx.AsyncClient, gateway: Gateway, tenant: Tenant, payload: dict[str, Any]) -> str:
    response = await client.post(gateway.generations, json=payload, headers=tenant.headers)
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["object"] == "generation.task" and task["status"] == "queued", task
    task_id: str = task["id"]
    return task_id


async def poll_until_terminal(
    client: httpx.AsyncClient, generations: str, tenant: Tenant, task_id: str, server: Process
) -> dict[str, Any]:
    """Poll the status call (each answer HTTP 200) until the task is completed or failed."""
    deadline = time.monotonic() + TASK_DEADLINE_S
    seen: list[str] = []
    while True:
        response = await client.get(f"{generations}/{task_id}", headers=tenant.headers)
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        assert task["id"] == task_id
        seen.append(task["status"])
        if task["status"] in TERMINAL:
            return task
        assert task["status"] in ("queued", "in_progress"), task
        if time.monotonic() > deadline:
            pytest.fail(
                f"task {task_id} not terminal after {TASK_DEADLINE_S} s: {seen[-5:]}\n"
                f"{server.name} log tail:\n{server.tail()}"
            )
        await asyncio.sleep(POLL_S)


def upstream_task_id(result_url: str) -> str:
    """The sandbox serves results at /files/{upstream task id}/{index}.png."""
    parts = urlsplit(result_url).path.split("/")
    assert parts[-2].startswith("img_") and parts[-1].endswith(".png"), result_url
    return parts[-2]


def assert_png(content: bytes, ratio: float) -> tuple[int, int]:
    with Image.open(io.BytesIO(content)) as image:
        assert image.format == "PNG"
        image.load()
        width, height = image.size
    assert abs(width / height - ratio) < 0.05, (width, height)
    return width, height


# --- 1. the ops flow ----------------------------------------------------------------------------------------


async def test_ops_flow_submit_poll_download(fresh_database_url: str, processes: Processes, sandbox: Sandbox) -> None:
    env = gateway_env(fresh_database_url, sandbox.url)
    migrated = processes.run(["migrate"], env)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    assert "migrated to head" in migrated.stdout
    pending = [processes.spawn_tenant(name, env) for name in ("acme", "globex")]
    gateway = start_gateway(processes, env)
    acme, globex = (gateway.tenant(p) for p in pending)
    assert acme.name == "acme" and acme.id and acme.key.startswith("sk-gw-")
    assert globex.id != acme.id and globex.key != acme.key

    async with http_client() as client:
        task_id = await submit(client, gateway, acme, body("a lighthouse at dusk", n=2, size="16:9"))
        task = await poll_until_terminal(client, gateway.generations, acme, task_id, gateway.process)
        assert task["status"] == "completed", task
        assert task["progress"] == 100
        urls = [item["url"] for item in task["result"]["data"]]
        assert len(urls) == 2 and len(set(urls)) == 2, task
        images = await asyncio.gather(*(client.get(url) for url in urls))
        for image in images:
            assert image.status_code == 200, image.text
            assert image.headers["content-type"] == "image/png"
            assert_png(image.content, 16 / 9)
        assert images[0].content != images[1].content

        # A completed task is answered from the ledger: asking again costs the upstream nothing.
        upstream_id = upstream_task_id(urls[0])
        before = sandbox.stats()
        assert before["status_by_task"].get(upstream_id, 0) >= 1
        # Asked again over longer than the refresh interval (0.2 s): a re-fetch would have happened by now.
        for _ in range(3):
            response = await client.get(f"{gateway.generations}/{task_id}", headers=acme.headers)
            assert response.status_code == 200, response.text
            assert response.json() == task
            await asyncio.sleep(0.15)
        after = sandbox.stats()
        assert after["status_by_task"].get(upstream_id) == before["status_by_task"][upstream_id], after
        assert after["status"] == before["status"], after

        # A wrong key is refused in the envelope, on both calls.
        wrong = {"Authorization": "Bearer sk-gw-wrong-key"}
        for response in (
            await client.post(gateway.generations, json=body("x"), headers=wrong),
            await client.get(f"{gateway.generations}/{task_id}", headers=wrong),
        ):
            error = assert_envelope(response, 401, "unauthorized")
            assert error.get("type") == "authentication_error", error

        # Another tenant cannot see the task: the same 404 as for a task that does not exist.
        foreign = await client.get(f"{gateway.generations}/{task_id}", headers=globex.headers)
        error = assert_envelope(foreign, 404)
        assert error["code"] in ("task_not_found", 404) and error.get("type") == "not_found_error", error
        unknown = await client.get(f"{gateway.generations}/task_img_doesnotexist", headers=globex.headers)
        assert unknown.json() == {"error": error}
    assert sandbox.stats()["create"] == 1


# --- 2. failure paths ---------------------------------------------------------------------------------------


async def test_failure_paths(database_url: str, processes: Processes, sandbox: Sandbox) -> None:
    env = gateway_env(database_url, sandbox.url)
    pending = processes.spawn_tenant("acme", env)
    gateway = start_gateway(processes, env)
    acme = gateway.tenant(pending)

    async with http_client() as client:
        # Submitted first: the 429 below cools the only upstream key (a task already sent is still polled with it).
        doomed = await submit(client, gateway, acme, body("[fault:fail] a doomed fox"))

        async def failing_task() -> None:
            task = await poll_until_terminal(client, gateway.generations, acme, doomed, gateway.process)
            assert task["status"] == "failed", task
            assert task["error"]["code"] == "generation_failed", task
            assert task["error"]["message"], task
            assert "result" not in task

        async def refused_submits() -> None:
            broken, refused = await asyncio.gather(
                client.post(gateway.generations, json=body("[fault:500] broken"), headers=acme.headers),
                client.post(gateway.generations, json=body("[fault:content_policy] nope"), headers=acme.headers),
            )
            # Last: a 429 cools the only upstream key for its Retry-After. Neither it nor the 500 is the caller's
            # fault: both tasks wait in the ledger (`queued`) for the reconciler to send them again.
            limited = await client.post(gateway.generations, json=body("[fault:429] busy"), headers=acme.headers)
            for waiting in (limited, broken):
                assert waiting.status_code == 200, waiting.text
                assert waiting.json()["status"] == "queued", waiting.text
            error = assert_envelope(refused, 422, "content_policy_violation")
            assert error.get("type") == "invalid_request_error"
            for response in (limited, broken, refused):
                assert UPSTREAM_KEY not in response.text

        await asyncio.gather(failing_task(), refused_submits())

    stats = sandbox.stats()
    assert stats["create"] >= 4, stats  # the waiting two may have been tried again already
    faults = stats["faults"]
    assert faults["fail"] == 1 and faults["content_policy"] == 1 and faults["429"] >= 1 and faults["500"] >= 1, stats


# --- 3. many pollers, one upstream call ---------------------------------------------------------------------


async def test_many_pollers_one_upstream_call(database_url: str, processes: Processes, sandbox: Sandbox) -> None:
    # A refresh interval longer than any run of this test: every poll after the first one must be answered from
    # the ledger (single-flight in the process, the refresh claim in the database), however slow the machine.
    env = gateway_env(database_url, sandbox.url, GATEWAY_STATUS_REFRESH_INTERVAL_S="600")
    pending = processes.spawn_tenant("acme", env)
    gateway = start_gateway(processes, env)
    acme = gateway.tenant(pending)
    pollers = 200
    sandbox.configure(hold=True)  # the task stays open during the burst, whatever its duration

    # No connection is reused: under load the client can be slow enough to reuse a keep-alive connection the server
    # had already closed (uvicorn closes idle ones after 5 s), which fails with ReadError without the gateway at fault.
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=0)
    async with http_client(limits=limits, timeout=httpx.Timeout(60.0, connect=30.0)) as client:
        task_id = await submit(client, gateway, acme, body("a crowd of pollers"))
        url = f"{gateway.generations}/{task_id}"
        responses = await asyncio.gather(*(client.get(url, headers=acme.headers) for _ in range(pollers)))

    statuses = {r.status_code for r in responses}
    assert statuses == {200}, [r.text for r in responses if r.status_code != 200][:3]
    tasks = [r.json() for r in responses]
    assert {t["id"] for t in tasks} == {task_id}
    assert {t["status"] for t in tasks} == {"queued"}, {t["status"] for t in tasks}
    stats = sandbox.stats()
    assert stats["create"] == 1, stats
    assert len(stats["status_by_task"]) == 1, stats
    calls = next(iter(stats["status_by_task"].values()))
    assert calls == 1, stats
    assert stats["status"] == 1, stats


# --- 4. zero-config demo ------------------------------------------------------------------------------------


def zero_config_env(tmp_path: Path) -> dict[str, str]:
    return base_env(GATEWAY_DATA_DIR=str(tmp_path / "data"))


def embedded_server_runs(tmp_path: Path) -> bool:
    return (tmp_path / "data" / "postgres" / "postmaster.pid").exists()


def sqlite_files(tmp_path: Path) -> list[Path]:
    return [path for path in tmp_path.rglob("*") if path.suffix in (".db", ".sqlite", ".sqlite3")]


def start_zero_config(processes: Processes, tmp_path: Path, port: int) -> tuple[Process, str, str]:
    """`serve --port P` with only GATEWAY_DATA_DIR set; the banner's tenant key and curl line."""
    env = zero_config_env(tmp_path)
    process = processes.start(
        ["serve", "--port", str(port)],
        env,
        ready_url=f"http://{HOST}:{port}/healthz",
        cwd=tmp_path,
        name="zero-config",
    )
    log = process.log()
    match = KEY_PATTERN.search(log)
    assert match, f"no tenant key in the banner:\n{log[-2000:]}"
    curl = [line for line in log.splitlines() if line.strip().startswith("curl ")]
    assert curl, f"no curl line in the banner:\n{log[-2000:]}"
    return process, match.group(1), curl[0]


async def test_zero_config_demo(processes: Processes, tmp_path: Path) -> None:
    port = free_port()
    process, key, curl = start_zero_config(processes, tmp_path, port)
    base = f"http://{HOST}:{port}"
    assert f"{base}/v1/images/generations" in curl, curl
    assert key in curl, curl
    assert "starting the embedded PostgreSQL under" in process.log(), process.tail()
    assert oct((tmp_path / "data").stat().st_mode & 0o777) in ("0o700", "0o711"), "0711 as root: see embedded.py"
    assert embedded_server_runs(tmp_path)
    assert not sqlite_files(tmp_path)

    demo = Tenant(id="", name="demo", key=key)
    async with http_client() as client:
        response = await client.post(
            f"{base}/v1/images/generations", json=body("a red fox", size="16:9"), headers=demo.headers
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["id"]
        task = await poll_until_terminal(client, f"{base}/v1/images/generations", demo, task_id, process)
        assert task["status"] == "completed", task
        [url] = [item["url"] for item in task["result"]["data"]]
        assert url.startswith(f"{base}/_sandbox/"), url
        image = await client.get(url)
        assert image.status_code == 200, image.text
        assert_png(image.content, 16 / 9)

    # A restart keeps the ledger and prints the same key, which still works.
    processes.close()
    assert not embedded_server_runs(tmp_path), "serve stops the embedded PostgreSQL it started when SIGTERM ends it"
    port = free_port()
    _, again, curl = start_zero_config(processes, tmp_path, port)
    assert again == key
    assert f"http://{HOST}:{port}/v1/images/generations" in curl, curl
    async with http_client() as client:
        response = await client.get(f"http://{HOST}:{port}/v1/images/generations/{task_id}", headers=demo.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"

    # The CLI finds the ledger of the running `serve` through the data folder: its tenant works there at once.
    made = processes.run(["tenants", "create", "made-by-the-cli", "--json"], zero_config_env(tmp_path))
    assert made.returncode == 0, made.stderr
    assert "starting the embedded PostgreSQL" not in made.stderr, made.stderr
    cli_tenant = Tenant(id="", name="made-by-the-cli", key=made.json()["key"])
    async with http_client() as client:
        response = await client.get(f"http://{HOST}:{port}/v1/usage", headers=cli_tenant.headers)
        assert response.status_code == 200, response.text

    # Without `serve`, each command starts the server and stops it when it ends.
    processes.close()
    for _ in range(2):
        listed = processes.run(["tenants", "list"], zero_config_env(tmp_path))
        assert listed.returncode == 0, listed.stderr
        assert "made-by-the-cli" in listed.stdout and "demo" in listed.stdout, listed.stdout
        assert "starting the embedded PostgreSQL" in listed.stderr, listed.stderr
        assert not embedded_server_runs(tmp_path)


# --- 5. refusal ---------------------------------------------------------------------------------------------


def test_refuses_placeholder_secret_key(processes: Processes, tmp_path: Path) -> None:
    env = base_env(
        GATEWAY_UPSTREAM_BASE_URL="http://127.0.0.1:9",
        GATEWAY_UPSTREAM_KEYS="sk-upstream-0123456789",
        GATEWAY_SECRET_KEY="changeme",
        GATEWAY_ADMIN_TOKEN="adm-e2e-0123456789abcdef",
    )
    # It refuses at once rather than serving: a run that binds and waits would hit the timeout and fail here.
    result = processes.run(["serve", "--port", str(free_port())], env, cwd=tmp_path, timeout_s=60)
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "GATEWAY_SECRET_KEY" in lines[0], lines
    assert "Traceback" not in result.stderr


def test_serve_refuses_unmigrated_database(postgres_server: str, processes: Processes) -> None:
    url = create_postgres_database(postgres_server, prefix="gw_e2e_unmigrated")
    try:
        env = gateway_env(url, "http://127.0.0.1:9")
        result = processes.run(["serve", "--host", HOST, "--port", str(free_port())], env, timeout_s=15)
    finally:
        drop_postgres_database(url)
    assert result.returncode != 0, result
    assert "seedream-gateway migrate" in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seedream-gateway:"), result.stderr[-3000:]


def test_serve_refuses_a_changed_secret_key(fresh_database_url: str, sandbox: Sandbox, processes: Processes) -> None:
    env = gateway_env(fresh_database_url, sandbox.url)
    assert processes.run(["migrate"], env).returncode == 0
    start_gateway(processes, env).process.stop()  # stores the upstream key, encrypted with the first secret
    changed = {**env, "GATEWAY_SECRET_KEY": "another-secret-key-0123456789abcdef"}
    result = processes.run(["serve", "--host", HOST, "--port", str(free_port())], changed, timeout_s=15)
    assert result.returncode == 2, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seedream-gateway:") and "GATEWAY_SECRET_KEY" in last, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
