"""A client that goes away mid-body, on a real socket to a real `serve`: counted and logged as 499 (nginx's "client
closed request"), not as a 500 that feeds the 5xx alert."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from tests.e2e.conftest import HOST, Processes, Sandbox, gateway_env, http_client, start_gateway

pytestmark = pytest.mark.e2e

SUBMIT = "/v1/images/generations"
DEADLINE_S = 15.0


def _count(metrics: str, status: str) -> float:
    pattern = re.compile(rf'^gateway_http_requests_total\{{[^}}]*status="{status}"[^}}]*\}} (\S+)$', re.MULTILINE)
    return sum(float(v) for v in pattern.findall(metrics))


def _send_half_a_body(port: int, key: str) -> None:
    """A submit that declares 1000 bytes, sends 12, and closes the connection."""
    head = (
        f"POST {SUBMIT} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"prompt": "')
        time.sleep(0.2)  # the server has the headers and part of the body, and waits for the rest


async def test_a_client_gone_mid_body_is_a_499(clean_postgres: str, sandbox: Sandbox, processes: Processes) -> None:
    env = gateway_env(clean_postgres, sandbox.url)
    gateway = start_gateway(processes, env)
    port = int(gateway.url.rsplit(":", 1)[1])
    async with http_client() as client:
        created = await client.post(
            f"{gateway.url}/admin/v1/tenants",
            json={"name": "gone"},
            headers={"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"},
        )
        assert created.status_code in (200, 201), created.text
        key = created.json()["key"]
        before = (await client.get(f"{gateway.url}/metrics")).text

        await asyncio.to_thread(_send_half_a_body, port, key)

        access_line = re.compile(rf"POST {SUBMIT} 499 ")
        deadline = time.monotonic() + DEADLINE_S
        while True:  # the server notices the closed connection on its own time, and writes access lines in batches
            after = (await client.get(f"{gateway.url}/metrics")).text
            counted = _count(after, "499") > _count(before, "499")
            if (counted and access_line.search(gateway.process.log())) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert _count(after, "499") - _count(before, "499") == 1, after
    assert _count(after, "500") == _count(before, "500") == 0
    assert access_line.search(gateway.process.log()), gateway.process.tail()
