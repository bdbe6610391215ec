"""Kept results on an S3-compatible store (issue 23): moto's stand-alone server on loopback (one per module), reached
through a TCP proxy that the store-outage test cuts. The same flow as the local store's: copies kept in the bucket,
handed out as presigned links, the gateway's own link redirecting a tenant's key to one, other tenants refused, the
upstream's links dead while the kept copies answer, retention deleting the objects, the store away and back.

moto does not check a presigned URL's signature or expiry (S3 does): the links' expiry is checked as what they carry
(X-Amz-Date + X-Amz-Expires = the answer's `expires_at`), and refusals through the gateway's own route.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from app.models import KeptImage
from app.results.service import ResultService
from app.sandbox.config import SandboxConfig
from tests.fixtures.gateway import ADMIN_TOKEN, Harness, running_gateway
from tests.fixtures.tcp_proxy import TcpProxy
from tests.support.kept import completed, served

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BUCKET = "gateway-results"
PREFIX = "kept"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    httpx.put(f"{url}/{BUCKET}").raise_for_status()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def proxy(moto: str) -> Iterator[TcpProxy]:
    parts = urlsplit(moto)
    with TcpProxy((parts.hostname or "", parts.port or 0)) as tcp:
        yield tcp


@pytest.fixture
async def s3(
    database_url: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Harness]:
    # Credentials from the usual sources: the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    async with (
        running_gateway(
            database_url,
            sandbox_config=SandboxConfig(task_seconds=10, queue_seconds=1, seed=7, image_long_side=512),
            results_store="s3",
            results_s3_bucket=BUCKET,
            results_s3_prefix=PREFIX,
            results_s3_endpoint=f"http://127.0.0.1:{proxy.port}",
            results_s3_region="us-east-1",
            results_allow_private=True,
            results_poll_interval_s=0,
            results_link_ttl_s=3600,
            data_dir=tmp_path,
        ) as gw,
        served(gw.sandbox) as url,
    ):
        gw.sandbox_config(public_base_url=url)
        yield gw


def results(gw: Harness) -> ResultService:
    service: ResultService = gw.app.state.results
    return service


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def urls(answer: dict[str, Any]) -> list[str]:
    return [image["url"] for image in answer["result"]["data"]]


async def status(gw: Harness, key: str, task_id: str) -> dict[str, Any]:
    gw.clock.advance(1)  # past the refresh interval a completed task with copies pending is kept rendered for
    r = await gw.client.get(f"/v1/images/generations/{task_id}", headers=auth(key))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def rows(gw: Harness, task_id: str) -> list[KeptImage]:
    async with gw.sessions() as session:
        found = await session.execute(select(KeptImage).where(KeptImage.task_id == task_id).order_by(KeptImage.index))
        return list(found.scalars().all())


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url)


async def test_kept_in_the_bucket_and_handed_out_presigned(s3: Harness, moto: str) -> None:
    key, other = await s3.new_tenant("acme"), await s3.new_tenant("globex")
    first = await completed(s3, key, n=2)
    task_id, upstream = first["id"], urls(first)
    originals = [(await get(u)).content for u in upstream]
    assert await results(s3).run_once() == 2
    stored = await rows(s3, task_id)
    assert [r.state for r in stored] == ["kept", "kept"]
    for row, original in zip(stored, originals, strict=True):  # in the bucket, under the prefix
        assert (await get(f"{moto}/{BUCKET}/{PREFIX}/{row.store_key}")).content == original

    answer = await status(s3, key, task_id)
    links = urls(answer)
    for link, original in zip(links, originals, strict=True):
        query = parse_qs(urlsplit(link).query)
        assert urlsplit(link).path.startswith(f"/{BUCKET}/{PREFIX}/") and "X-Amz-Signature" in query
        assert query["X-Amz-Expires"] == ["3600"]
        assert (await get(link)).content == original
    signed_at = dt.datetime.strptime(parse_qs(urlsplit(links[0]).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    assert signed_at.tzinfo is None  # the store signs on the machine's clock; the answer's expiry is the gateway's
    assert answer["expires_at"] == int(s3.clock.time()) + 3600

    # The gateway's own link: a tenant's key gets a redirect to a fresh presigned URL; another tenant a 404.
    path = f"/v1/results/{task_id}/0"
    r = await s3.client.get(path, headers=auth(key))
    assert r.status_code == 302 and (await get(r.headers["location"])).content == originals[0]
    assert (await s3.client.get(path, headers=auth(other))).status_code == 404
    assert (await s3.client.get(path)).status_code == 401

    # The upstream's files gone: the kept copies still answer.
    s3.sandbox.state.sandbox.tasks.clear()
    assert (await get(upstream[0])).status_code == 404
    assert (await get(urls(await status(s3, key, task_id))[0])).content == originals[0]

    tenant_id = await s3.tenant_id(key)
    storage = (await s3.client.get(f"/admin/v1/tenants/{tenant_id}/usage", headers=ADMIN)).json()["storage"]
    assert storage == {"images": 2, "bytes": sum(map(len, originals)), "pending": 0, "retention_days": 30}


async def test_retention_deletes_the_objects(s3: Harness, moto: str) -> None:
    key = await s3.new_tenant("acme")
    first = await completed(s3, key)
    await results(s3).run_once()
    [row] = await rows(s3, first["id"])
    assert (await get(f"{moto}/{BUCKET}/{PREFIX}/{row.store_key}")).status_code == 200
    s3.clock.advance(30 * 86400)
    assert await results(s3).run_once() == 1
    assert (await get(f"{moto}/{BUCKET}/{PREFIX}/{row.store_key}")).status_code == 404
    [row] = await rows(s3, first["id"])
    assert row.state == "deleted"


async def test_the_store_away_and_back(s3: Harness, proxy: TcpProxy) -> None:
    key = await s3.new_tenant("acme")
    proxy.cut()
    try:
        first = await completed(s3, key)  # completes and settles as before
        assert await results(s3).run_once() == 1  # the attempt fails on the store, which is then known to be away
        [row] = await rows(s3, first["id"])
        assert row.state == "pending" and (row.last_error or "").startswith("store:")
        s3.clock.advance(31)
        assert await results(s3).run_once() == 0  # a probe first: nothing claimed, nothing fetched while it is away
        ready = (await s3.client.get("/readyz")).json()
        assert ready["status"] == "degraded" and ready["checks"]["result_store"].startswith("degraded:")
        assert urls(await status(s3, key, first["id"])) == urls(first)
    finally:
        proxy.restore()
    s3.clock.advance(31)
    await results(s3).run_once()
    [row] = await rows(s3, first["id"])
    assert row.state == "kept"
    assert (await s3.client.get("/readyz")).json()["checks"]["result_store"] == "ok"
