"""Webhooks between real processes: `serve` (with its deliverer) in front of the sandbox process, the CLI, and a
real HTTP receiver on 127.0.0.1 that fails before it succeeds. Signatures are checked with hmac + hashlib written in
the test fixtures, never the gateway's signer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import Processes, Sandbox, gateway_env, http_client, start_gateway
from tests.fixtures.webhook_receiver import receiving, signed_by

pytestmark = pytest.mark.e2e

DEADLINE_S = 60.0


async def test_task_ends_reach_the_endpoint_and_the_callback_signed_with_retries(
    clean_postgres: str, sandbox: Sandbox, processes: Processes
) -> None:
    # PostgreSQL only (the suite's time): tests/webhooks/test_webhooks.py runs the same rules on both databases.
    env = gateway_env(
        clean_postgres,
        sandbox.url,
        GATEWAY_WEBHOOK_ALLOW_PRIVATE="true",
        GATEWAY_WEBHOOK_RETRY_SCHEDULE_S="0.3,0.3",  # fast retries; three attempts in all
        GATEWAY_WEBHOOK_POLL_INTERVAL_S="0.3",
        GATEWAY_POLL_INTERVAL_S="0.3",
        # A completed task's events wait for its kept copies (GATEWAY_RESULTS_WEBHOOK_HOLD_S at most): copied from
        # the sandbox on loopback as from the public upstream, they go at once instead of after the hold (35 s).
        GATEWAY_RESULTS_ALLOW_PRIVATE="true",
        GATEWAY_RESULTS_POLL_INTERVAL_S="0.3",
    )
    pending = processes.spawn_tenant(f"hooks-{time.monotonic_ns()}", env)
    gateway = start_gateway(processes, env)
    tenant = gateway.tenant(pending)
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with receiving(fail_first=1, path="/endpoint") as endpoint, receiving(path="/cb") as callback:
        origin = callback.url.rsplit("/", 1)[0]
        configured = processes.run(
            ["webhooks", "set", tenant.id, "--url", endpoint.url, "--callback-origins", origin, "--json"], env
        )
        assert configured.returncode == 0, configured.stderr
        secret = configured.json()["secret"]
        showing = processes.spawn(["webhooks", "show", tenant.name], env)  # read back while the task runs

        async with http_client() as client:
            refused = await client.post(
                gateway.generations,
                headers=tenant.headers,
                json={"prompt": "x", "callback_url": "http://203.0.113.7/cb"},
            )
            assert refused.status_code == 403 and refused.json()["error"]["param"] == "callback_url"
            r = await client.post(
                gateway.generations,
                headers=tenant.headers,
                json={"prompt": "a lighthouse", "callback_url": callback.url + "?order=7"},
            )
            assert r.status_code == 200, r.text
            task_id = r.json()["id"]
            # Nobody polls: the background reconciler ends the task; the deliverer sends its events.
            [to_callback] = await callback.wait_for(1, DEADLINE_S)
            first, retried = await endpoint.wait_for(2, DEADLINE_S)

            for got in (to_callback, first, retried):
                assert signed_by(got, secret)
                event: dict[str, Any] = json.loads(got.body)
                assert event["type"] == "generation.completed" and event["data"]["task_id"] == task_id
                assert event["data"]["status"] == "SUCCESS" and event["data"]["result"]["data"]
            assert to_callback.path == "/cb?order=7"
            assert first.headers["x-toapis-webhook-id"] == retried.headers["x-toapis-webhook-id"]
            assert to_callback.headers["x-toapis-webhook-id"] != first.headers["x-toapis-webhook-id"]

            log = await _until_delivered(client, gateway.url, admin, task_id, count=2)
            by_url = {d["url"]: d for d in log}
            assert by_url[endpoint.url]["attempts"] == 2 and by_url[endpoint.url]["last_status_code"] == 204
            assert by_url[callback.url + "?order=7"]["attempts"] == 1

        shown = processes.finish(showing)
        assert shown.returncode == 0 and secret not in shown.stdout and endpoint.url in shown.stdout
        # The command line enqueues; the server's deliverer sends it within its poll interval.
        tested = processes.run(["webhooks", "test", tenant.id, "--json"], env)
        assert tested.returncode == 0, tested.stderr
        test_id = tested.json()["id"]
        third = (await endpoint.wait_for(3, DEADLINE_S))[2]
        assert third.headers["x-toapis-webhook-id"] == test_id and signed_by(third, secret)
        assert json.loads(third.body)["type"] == "endpoint.test"

        listing = processes.spawn(["webhooks", "deliveries", "--tenant", tenant.id, "--json"], env)
        tabling = processes.spawn(["webhooks", "deliveries", "--tenant", tenant.name], env)
        listed, table = processes.finish(listing), processes.finish(tabling)
        assert listed.returncode == 0, listed.stderr
        assert len(listed.json()["data"]) == 3 and secret not in listed.stdout
        assert table.returncode == 0 and test_id in table.stdout

        replayed = processes.run(["webhooks", "replay", test_id, "--json"], env)
        assert replayed.returncode == 0 and replayed.json()["status"] == "pending"
        fourth = (await endpoint.wait_for(4, DEADLINE_S))[3]
        assert fourth.headers["x-toapis-webhook-id"] == test_id and fourth.body == third.body

    audit = processes.run(["webhooks", "delivery", test_id], env)
    assert audit.returncode == 0 and "endpoint.test" in audit.stdout


async def _until_delivered(
    client: Any, base: str, admin: dict[str, str], task_id: str, count: int
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = await client.get(f"{base}/admin/v1/webhook-deliveries", headers=admin, params={"task_id": task_id})
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        if len(data) == count and all(d["status"] == "delivered" for d in data):
            return data
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.1)
