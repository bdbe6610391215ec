"""Kept results on the local store (issue 23): a completed task's images copied from the upstream into the
gateway's directory, served by signed links that expire, refused to other tenants, still answering once the
upstream's links are dead; lost at the upstream's expiry; retention; ops deleting; the store away and back.

The sandbox is served on a real loopback socket, so the copier fetches its result links over HTTP (under the SSRF
rule, loopback allowed by GATEWAY_RESULTS_ALLOW_PRIVATE); the copier's rounds are run by the test
(`ResultService.run_once`), on the fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.models import KeptImage, WebhookDelivery
from app.results.service import ResultService
from app.sandbox.config import SandboxConfig
from tests.fixtures.gateway import ADMIN_TOKEN, Harness, running_gateway
from tests.support.kept import completed, served

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
GATEWAY = "http://gateway.test"


@pytest.fixture
async def kept(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with (
        running_gateway(
            database_url,
            sandbox_config=SandboxConfig(task_seconds=10, queue_seconds=1, seed=7, image_long_side=256),
            results_store="local",
            results_dir=tmp_path / "results",
            results_allow_private=True,
            results_poll_interval_s=0,
            results_link_ttl_s=3600,
            public_url=GATEWAY,
            webhook_allow_private=True,
        ) as gw,
        served(gw.sandbox) as url,
    ):
        gw.sandbox_config(public_base_url=url)
        yield gw


def results(gw: Harness) -> ResultService:
    service: ResultService = gw.app.state.results
    return service


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def rows(gw: Harness, task_id: str) -> list[KeptImage]:
    async with gw.sessions() as session:
        found = await session.execute(select(KeptImage).where(KeptImage.task_id == task_id).order_by(KeptImage.index))
        return list(found.scalars().all())


async def status(gw: Harness, key: str, task_id: str) -> dict[str, Any]:
    r = await gw.client.get(f"/v1/images/generations/{task_id}", headers=auth(key))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def urls(answer: dict[str, Any]) -> list[str]:
    return [image["url"] for image in answer["result"]["data"]]


async def fetch(url: str) -> httpx.Response:
    """An upstream (sandbox) link, over the real socket."""
    async with httpx.AsyncClient() as client:
        return await client.get(url)


async def test_images_kept_served_by_signed_links_that_expire(kept: Harness) -> None:
    key, other = await kept.new_tenant("acme"), await kept.new_tenant("globex")
    first = await completed(kept, key, n=2)
    task_id, upstream = first["id"], urls(first)
    assert all(u.startswith("http://127.0.0.1:") for u in upstream)  # not kept yet: the upstream's, as before
    assert [r.state for r in await rows(kept, task_id)] == ["pending", "pending"]

    assert await results(kept).run_once() == 2
    stored = await rows(kept, task_id)
    assert [r.state for r in stored] == ["kept", "kept"]
    assert [r.upstream_url for r in stored] == upstream  # the ledger keeps both

    kept.clock.advance(1)  # a completed task with copies pending is kept rendered for the refresh interval only
    answer = await status(kept, key, task_id)  # so the answer changed with the copies
    links = urls(answer)
    assert all(u.startswith(f"{GATEWAY}/v1/results/{task_id}/") for u in links)
    assert answer["url"] == links[0]
    assert answer["expires_at"] == int(kept.clock.time()) + 3600  # the links' own expiry, not the upstream's
    originals = [(await fetch(u)).content for u in upstream]
    for link, original in zip(links, originals, strict=True):
        r = await kept.client.get(link)  # no key: the signature is enough
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == original
    assert sum(r.size or 0 for r in stored) == sum(len(o) for o in originals)

    # Another tenant is refused (as with its task), with or without the link's signature.
    path = links[0].removeprefix(GATEWAY).split("?")[0]
    assert (await kept.client.get(path, headers=auth(other))).status_code == 404
    assert (await kept.client.get(path)).status_code == 401
    assert (await kept.client.get(path, headers=auth(key))).status_code == 200
    tampered = links[0].replace("sig=", "sig=0")[:-1]
    r = await kept.client.get(tampered)
    assert r.status_code == 401 and "signature is invalid" in r.json()["error"]["message"]

    kept.clock.advance(3601)  # the link expired: refused, except to its tenant's key
    r = await kept.client.get(links[0])
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    assert (await kept.client.get(links[0], headers=auth(key))).status_code == 200
    assert (await kept.client.get(links[0], headers=auth(other))).status_code == 404
    fresh = urls(await status(kept, key, task_id))  # a new status answer has fresh links
    assert fresh != links and (await kept.client.get(fresh[0])).status_code == 200

    usage = (await kept.client.get("/v1/usage", headers=auth(key))).json()["storage"]
    assert usage == {"images": 2, "bytes": sum(len(o) for o in originals), "pending": 0, "retention_days": 30}


async def test_kept_copies_answer_once_the_upstreams_links_are_dead(kept: Harness) -> None:
    key = await kept.new_tenant("acme")
    first = await completed(kept, key)
    await results(kept).run_once()
    kept.sandbox.state.sandbox.tasks.clear()  # the upstream's files are gone (as after its 24 h, or a restart)
    assert (await fetch(urls(first)[0])).status_code == 404
    kept.clock.advance(1)
    link = urls(await status(kept, key, first["id"]))[0]
    assert (await kept.client.get(link)).status_code == 200


async def test_a_copy_that_fails_until_the_upstreams_expiry_is_lost_and_the_task_stays_completed(
    kept: Harness,
) -> None:
    key = await kept.new_tenant("acme")
    first = await completed(kept, key)
    kept.sandbox.state.sandbox.tasks.clear()
    await results(kept).run_once()
    [row] = await rows(kept, first["id"])
    assert row.state == "pending" and row.attempts == 1 and "HTTP 404" in (row.last_error or "")
    kept.clock.advance(24 * 3600)
    await results(kept).run_once()
    [row] = await rows(kept, first["id"])
    assert row.state == "lost"
    answer = await status(kept, key, first["id"])
    assert answer["status"] == "completed" and urls(answer) == urls(first)  # the upstream's (dead) link, as before


async def test_an_image_over_the_size_cap_is_lost_at_once(database_url: str, tmp_path: Path) -> None:
    async with (
        running_gateway(
            database_url,
            sandbox_config=SandboxConfig(task_seconds=10, queue_seconds=1, seed=7, image_long_side=1024),
            results_store="local",
            results_dir=tmp_path,
            results_allow_private=True,
            results_poll_interval_s=0,
            results_max_image_bytes=1024,
        ) as gw,
        served(gw.sandbox) as url,
    ):
        gw.sandbox_config(public_base_url=url)
        key = await gw.new_tenant("acme")
        first = await completed(gw, key)
        await results(gw).run_once()
        [row] = await rows(gw, first["id"])
        assert row.state == "lost" and "1024-byte cap" in (row.last_error or "")
        assert not stored_files(tmp_path)


async def test_fetching_from_an_internal_address_is_refused_as_for_webhooks(database_url: str, tmp_path: Path) -> None:
    async with (
        running_gateway(database_url, results_store="local", results_dir=tmp_path, results_poll_interval_s=0) as gw,
        served(gw.sandbox) as url,
    ):
        gw.sandbox_config(public_base_url=url)
        key = await gw.new_tenant("acme")
        first = await completed(gw, key)
        await results(gw).run_once()
        [row] = await rows(gw, first["id"])
        assert row.state == "pending" and "not a global unicast address" in (row.last_error or "")
        assert "unless GATEWAY_RESULTS_ALLOW_PRIVATE is set" in (row.last_error or "")  # the setting that allows it


async def test_retention_ends_and_the_sweeper_deletes(kept: Harness, tmp_path: Path) -> None:
    key = await kept.new_tenant("acme")
    tenant_id = await kept.tenant_id(key)
    first = await completed(kept, key)
    await results(kept).run_once()
    files = stored_files(tmp_path / "results")
    assert len(files) == 1

    r = await kept.client.put(
        f"/admin/v1/tenants/{tenant_id}/images/retention", headers=ADMIN, json={"retention_days": 1}
    )
    assert r.status_code == 200 and r.json()["retention_days"] == 1
    kept.clock.advance(86400)
    link = urls(await status(kept, key, first["id"]))[0]
    assert link.startswith("http://127.0.0.1:")  # past its retention: no longer handed out
    assert await results(kept).run_once() == 1
    assert not files[0].exists()
    [row] = await rows(kept, first["id"])
    assert row.state == "deleted" and row.deleted_at is not None
    storage = (await kept.client.get(f"/admin/v1/tenants/{tenant_id}/images", headers=ADMIN)).json()
    assert storage == {"images": 0, "bytes": 0, "pending": 0, "retention_days": 1}

    # Retention 0: a new task's images are not kept at all.
    await kept.client.put(f"/admin/v1/tenants/{tenant_id}/images/retention", headers=ADMIN, json={"retention_days": 0})
    second = await completed(kept, key)
    assert await rows(kept, second["id"]) == []


async def test_ops_delete_a_tenants_images(kept: Harness, tmp_path: Path) -> None:
    key, other = await kept.new_tenant("acme"), await kept.new_tenant("globex")
    mine, theirs = await completed(kept, key), await completed(kept, other)
    await results(kept).run_once()
    link = urls(await status(kept, key, mine["id"]))[0]
    r = await kept.client.delete("/admin/v1/tenants/acme/images", headers=ADMIN)
    assert r.status_code == 200 and r.json()["images"] == 1
    assert (await kept.client.get(link)).status_code == 404  # at once
    await results(kept).run_once()
    assert [r.state for r in await rows(kept, mine["id"])] == ["deleted"]
    assert [r.state for r in await rows(kept, theirs["id"])] == ["kept"]
    assert len(stored_files(tmp_path / "results")) == 1
    audit = (await kept.client.get("/admin/v1/audit", headers=ADMIN, params={"action": "results.delete"})).json()
    assert audit["data"][0]["detail"] == {"images": 1}


async def test_store_away_and_back(kept: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key = await kept.new_tenant("acme")
    root = tmp_path / "results"
    moved = tmp_path / "away"
    root.rename(moved)
    root.write_text("not a directory")  # every write into the store fails
    try:
        first = await completed(kept, key)  # the task completes (and settles) as before
        for _ in range(3):
            await results(kept).run_once()
            kept.clock.advance(31)
        [row] = await rows(kept, first["id"])
        assert row.state == "pending" and "store:" in (row.last_error or "")
        ready = (await kept.client.get("/readyz")).json()
        assert ready["status"] == "degraded" and ready["checks"]["result_store"].startswith("degraded:")
        assert urls(await status(kept, key, first["id"])) == urls(first)
    finally:
        root.unlink()
        moved.rename(root)
    kept.clock.advance(31)
    await results(kept).run_once()
    [row] = await rows(kept, first["id"])
    assert row.state == "kept"
    ready = (await kept.client.get("/readyz")).json()
    assert ready["status"] == "ok" and ready["checks"]["result_store"] == "ok"
    outage_lines = [r for r in caplog.records if r.name == "app.core.outage" and "result store" in r.getMessage()]
    assert [r.levelno for r in outage_lines] == [logging.WARNING, logging.INFO]  # one line down, one line back


async def test_the_webhook_waits_for_the_copies_and_carries_their_links(kept: Harness) -> None:
    key = await kept.new_tenant("acme")
    tenant_id = await kept.tenant_id(key)
    r = await kept.client.put(
        f"/admin/v1/tenants/{tenant_id}/webhook", headers=ADMIN, json={"url": "http://127.0.0.1:9/hook"}
    )
    assert r.status_code == 200, r.text
    first = await completed(kept, key)
    async with kept.sessions() as session:
        [held] = (await session.execute(select(WebhookDelivery))).scalars().all()
    assert held.next_attempt_at is not None and held.next_attempt_at > kept.clock.now()
    await results(kept).run_once()
    async with kept.sessions() as session:
        [released] = (await session.execute(select(WebhookDelivery))).scalars().all()
    assert released.next_attempt_at is not None and released.next_attempt_at <= kept.clock.now()
    sent = httpx.Response(200, content=released.body).json()
    kept.clock.advance(1)
    shown = urls(await status(kept, key, first["id"]))  # the same kept copies (signed a second later)
    assert [d["url"].split("?")[0] for d in sent["data"]["result"]["data"]] == [u.split("?")[0] for u in shown]
    assert all(u.startswith(f"{GATEWAY}/v1/results/") for u in shown)


async def test_with_end_user_tokens_a_link_without_signature_opens_for_its_end_user_only(kept: Harness) -> None:
    tenant, key = await kept.tenants.create("acme")
    minter = await kept.tenants.create_key(tenant.id, name="backend", scopes=["submit", "read", "mint"], actor="test")
    tokens = {}
    for end_user in ("alice", "bob"):
        r = await kept.client.post("/v1/tokens", headers=auth(minter.key), json={"end_user": end_user})
        assert r.status_code == 200, r.text
        tokens[end_user] = r.json()["token"]
    first = await completed(kept, tokens["alice"])
    await results(kept).run_once()
    path = f"/v1/results/{first['id']}/0"
    assert (await kept.client.get(path, headers=auth(tokens["alice"]))).status_code == 200
    assert (await kept.client.get(path, headers=auth(tokens["bob"]))).status_code == 404
    assert (await kept.client.get(path, headers=auth(key))).status_code == 200  # the tenant's own key
