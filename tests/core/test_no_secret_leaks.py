"""One scenario through every kind of action, its every log line and answer captured: no tenant key (beyond the one
answer that hands it out), upstream key or admin token appears anywhere."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.fixtures.gateway import ADMIN_TOKEN, UPSTREAM_KEY, Harness

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECOND_UPSTREAM_KEY = "sk-upstream-second-secret-0123456789"


async def test_a_whole_scenario_leaks_no_secret(gw: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[httpx.Response] = []
    handed_out: dict[str, httpx.Response] = {}  # secret -> the one answer allowed to carry it

    async def call(method: str, url: str, **kwargs: object) -> httpx.Response:
        r = await gw.client.request(method, url, **kwargs)  # type: ignore[arg-type]
        answers.append(r)
        return r

    created = await call("POST", "/admin/v1/tenants", headers=ADMIN, json={"name": "leaky"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]["key"]
    handed_out[key] = created
    tenant_id = created.json()["id"]
    tenant = {"Authorization": f"Bearer {key}"}

    extra = await call("POST", f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN, json={"name": "ci"})
    assert extra.status_code == 201, extra.text
    handed_out[extra.json()["key"]] = extra
    rotated = await call(
        "POST", f"/admin/v1/keys/{extra.json()['id']}/rotate", headers=ADMIN, json={"grace_seconds": 0}
    )
    assert rotated.status_code in (200, 201), rotated.text
    handed_out[rotated.json()["key"]] = rotated
    await call("DELETE", f"/admin/v1/keys/{rotated.json()['id']}", headers=ADMIN)

    added = await call(
        "POST", "/admin/v1/upstream-keys", headers=ADMIN, json={"name": "second", "key": SECOND_UPSTREAM_KEY}
    )
    assert added.status_code == 201, added.text
    await call("GET", "/admin/v1/upstream-keys", headers=ADMIN)

    submitted = await call("POST", URL, headers=tenant, json={"prompt": "a secretive fox", "n": 1})
    assert submitted.status_code == 200, submitted.text
    await call("POST", URL, headers=tenant, json={"prompt": "refused [fault:content_policy]"})
    await call("POST", URL, headers=tenant, json={"prompt": "\x00"})
    await call("POST", URL, headers={"Authorization": "Bearer sk-gw-wrong"}, json={"prompt": "x"})
    await call("GET", "/admin/v1/tenants", headers={"Authorization": f"Bearer {key}"})  # a tenant key as admin
    gw.clock.advance(3600)
    await call("GET", f"{URL}/{submitted.json()['id']}", headers=tenant)
    await call("GET", "/v1/usage", headers=tenant)
    await call("GET", "/admin/v1/audit", headers=ADMIN)
    await call("GET", f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN)

    assert key in created.text  # the check below would see a leak: the one allowed answer does carry the key
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    for secret in (ADMIN_TOKEN, UPSTREAM_KEY, SECOND_UPSTREAM_KEY, *handed_out):
        assert secret not in logged, f"a log line carries a secret ({secret[:6]}...)"
        for answer in answers:
            if handed_out.get(secret) is answer:
                continue
            assert secret not in answer.text, f"{answer.request.method} {answer.request.url.path} echoes a secret"
            assert all(secret not in value for value in answer.headers.values())
