"""A browser's view of a task, over real sockets: the event stream read to its end, resumed, refused; and CORS.

`seedream-gateway serve` in front of `seedream-gateway sandbox` (tasks take a few seconds), read with httpx's
streaming client. Only generous bounds on time: a busy 2-core machine must pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    Gateway,
    Processes,
    Sandbox,
    Tenant,
    gateway_env,
    http_client,
    start_gateway,
)
from tests.fixtures.databases import create_postgres_database, drop_postgres_database, migrated
from tests.support.processes import Process

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example"
STREAM_DEADLINE_S = 60.0
SHUTDOWN_GRACE_S = 90  # far beyond what a stop takes when no request is left running


@dataclass(frozen=True)
class Event:
    id: int
    event: str
    data: str

    @property
    def task(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


async def read_events(response: httpx.Response) -> AsyncIterator[Event | str]:
    """Events as they arrive, and comments as their text; ends when the server closes the stream."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield Event(id=int(fields["id"]), event=fields["event"], data=fields["data"])
                fields = {}
        elif line.startswith(":"):
            yield line
        else:
            name, _, value = line.partition(": ")
            fields[name] = value
    assert not fields, f"an unterminated event at the end: {fields}"


async def stream_to_end(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[httpx.Response, list[Event]]:
    events: list[Event] = []

    async def read() -> httpx.Response:
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            async for item in read_events(response):
                if isinstance(item, Event):
                    events.append(item)
        return response

    response = await asyncio.wait_for(read(), STREAM_DEADLINE_S)
    return response, events


def _gateway_env(database_url: str, sandbox: Sandbox) -> dict[str, str]:
    return gateway_env(
        database_url,
        sandbox.url,
        GATEWAY_CORS_ORIGINS=ORIGIN,
        GATEWAY_EVENTS_POLL_INTERVAL_S="0.2",
        GATEWAY_POLL_INTERVAL_S="0",  # nothing but the streams and the status calls looks at the tasks
        GATEWAY_SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S),
    )


def _slow_tasks(sandbox: Sandbox) -> None:
    sandbox.configure(task_seconds=3.0, queue_seconds=0.5)  # a few seconds, so progress shows


@pytest.fixture(scope="module")
def shared(
    postgres_server: str, sandbox_process: Process, module_processes: Processes
) -> Iterator[tuple[Gateway, Tenant]]:
    """One gateway and one tenant for the tests that only read and refuse (a server start and a `tenants create`
    cost seconds of imports each): each of them submits its own tasks, and nothing in the background looks at a
    task (GATEWAY_POLL_INTERVAL_S=0), so they cannot see each other. Its own database, so no other test empties it
    under it."""
    database_url = migrated(create_postgres_database(postgres_server, prefix="gw_events"))
    try:
        env = _gateway_env(database_url, Sandbox(sandbox_process))
        pending = module_processes.spawn_tenant(f"browser-{time.monotonic_ns()}", env)
        gateway = start_gateway(module_processes, env)
        yield gateway, gateway.tenant(pending)
        gateway.process.stop()
    finally:
        drop_postgres_database(database_url)


@pytest.fixture
def gateway(shared: tuple[Gateway, Tenant], sandbox: Sandbox) -> Gateway:
    """The module's gateway, in front of the module's sandbox (its tasks reset, a few seconds long)."""
    gateway = shared[0]
    if gateway.process.popen.poll() is not None:
        pytest.fail(f"the shared gateway exited; log tail:\n{gateway.process.tail()}")
    _slow_tasks(sandbox)
    return gateway


@pytest.fixture
def tenant(shared: tuple[Gateway, Tenant], gateway: Gateway) -> Tenant:
    return shared[1]


@pytest.fixture
def own_gateway(clean_postgres: str, sandbox: Sandbox, processes: Processes) -> tuple[Gateway, Tenant]:
    """A gateway and a tenant of the test's own, for a test that stops the gateway."""
    _slow_tasks(sandbox)
    env = _gateway_env(clean_postgres, sandbox)
    pending = processes.spawn_tenant(f"browser-{time.monotonic_ns()}", env)
    gateway = start_gateway(processes, env)
    return gateway, gateway.tenant(pending)


async def submit(client: httpx.AsyncClient, gateway: Gateway, tenant: Tenant, **body: Any) -> str:
    r = await client.post(gateway.generations, headers=tenant.headers, json={"prompt": "a lighthouse", **body})
    assert r.status_code == 200, r.text
    task_id: str = r.json()["id"]
    return task_id


async def test_a_browser_reads_the_stream_to_the_end(gateway: Gateway, tenant: Tenant) -> None:
    async with http_client() as client:
        task_id = await submit(client, gateway, tenant, n=2)
        url = f"{gateway.generations}/{task_id}/events"
        response, events = await stream_to_end(client, url, {**tenant.headers, "Origin": ORIGIN})
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["access-control-allow-origin"] == ORIGIN

        assert events, "no event"
        ids = [e.id for e in events]
        assert ids == sorted(set(ids)), ids
        assert {e.event for e in events} == {"status"}
        assert all(e.task["id"] == task_id for e in events)
        rank = {"queued": 0, "in_progress": 1, "completed": 2}
        statuses = [e.task["status"] for e in events]
        assert statuses == sorted(statuses, key=rank.__getitem__), statuses
        assert statuses[-1] == "completed" and statuses.count("completed") == 1
        final = events[-1]
        assert final.id == 3100 and len(final.task["result"]["data"]) == 2
        # The stream's data is the status call's answer.
        status = await client.get(f"{gateway.generations}/{task_id}", headers=tenant.headers)
        assert status.text == final.data


async def test_a_reconnect_resumes_without_repeats(gateway: Gateway, tenant: Tenant) -> None:
    async with http_client() as client:
        task_id = await submit(client, gateway, tenant)
        url = f"{gateway.generations}/{task_id}/events"
        # The first event, then the connection drops (the client goes away mid-stream).
        async with client.stream("GET", url, headers=tenant.headers) as response:
            first = await anext(e async for e in read_events(response) if isinstance(e, Event))
        assert first.task["status"] in ("queued", "in_progress") and first.id < 3000

        _, rest = await stream_to_end(client, url, {**tenant.headers, "Last-Event-ID": str(first.id)})
        assert rest and all(e.id > first.id for e in rest)
        assert [e.id for e in rest] == sorted({e.id for e in rest})
        assert rest[-1].task["status"] == "completed"

        # The task has ended: only its final event for a client that lacks it...
        _, after = await stream_to_end(client, url, {**tenant.headers, "Last-Event-ID": str(first.id)})
        assert [e.id for e in after] == [3100] and after[0].data == rest[-1].data
        # ...and nothing (204: an EventSource stops reconnecting) for one that has it.
        done = await client.get(url, headers={**tenant.headers, "Last-Event-ID": "3100"})
        assert done.status_code == 204 and done.content == b""


async def test_refusals_come_before_the_stream(gateway: Gateway, tenant: Tenant) -> None:
    admin = {"Authorization": f"Bearer {gateway.env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        task_id = await submit(client, gateway, tenant)
        created = await client.post(
            f"{gateway.url}/admin/v1/tenants/{tenant.id}/keys", headers=admin, json={"scopes": ["submit"]}
        )
        assert created.status_code == 201, created.text
        writer = {"Authorization": f"Bearer {created.json()['key']}"}
        url = f"{gateway.generations}/{task_id}/events"
        for target, headers, status in (
            (url, {}, 401),
            (url, {"Authorization": "Bearer sk-gw-wrong"}, 401),
            (url, writer, 403),
            (f"{gateway.generations}/task_img_0123/events", tenant.headers, 404),
        ):
            r = await client.get(target, headers=headers)
            assert r.status_code == status, r.text
            assert r.headers["content-type"] == "application/json"
            assert set(r.json()) == {"error"}


async def test_cors_preflight_and_answers(gateway: Gateway, tenant: Tenant) -> None:
    async with http_client() as client:
        preflight = await client.options(
            gateway.generations,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed

        refused = await client.options(
            gateway.generations, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

        task_id = await submit(client, gateway, tenant)
        status_url = f"{gateway.generations}/{task_id}"
        allowed_answer = await client.get(status_url, headers={**tenant.headers, "Origin": ORIGIN})
        assert allowed_answer.status_code == 200
        assert allowed_answer.headers["access-control-allow-origin"] == ORIGIN
        assert "x-ratelimit-remaining" in allowed_answer.headers["access-control-expose-headers"].lower()
        foreign = await client.get(status_url, headers={**tenant.headers, "Origin": "https://evil.example"})
        assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers


async def test_a_client_hanging_up_ends_its_stream_in_the_server(own_gateway: tuple[Gateway, Tenant]) -> None:
    """uvicorn stops only once every request has ended (or after the grace): a stream left running after its
    client went away would hold a SIGTERM for the whole grace, as the slow task stays open for a minute."""
    gateway, tenant = own_gateway
    async with http_client() as client:
        task_id = await submit(client, gateway, tenant, prompt="a slow lighthouse [fault:slow]")
        url = f"{gateway.generations}/{task_id}/events"
        async with client.stream("GET", url, headers=tenant.headers) as response:
            first = await anext(e async for e in read_events(response) if isinstance(e, Event))
        assert first.task["status"] in ("queued", "in_progress")
        still = await client.get(f"{gateway.generations}/{task_id}", headers=tenant.headers)
        assert still.json()["status"] != "completed"
    await asyncio.sleep(0.5)  # the server notices the closed connection
    started = time.monotonic()
    os.killpg(gateway.process.popen.pid, signal.SIGTERM)
    code = await asyncio.to_thread(gateway.process.popen.wait, SHUTDOWN_GRACE_S + 10)
    assert time.monotonic() - started < SHUTDOWN_GRACE_S / 3, gateway.process.tail()
    assert code in (0, -signal.SIGTERM), gateway.process.tail()  # uvicorn ends by the signal itself
