"""/readyz: the database answers at the migrations' head, and an upstream key can take tasks."""

from __future__ import annotations

import pytest

from app.health import router as health
from tests.fixtures.gateway import Harness


async def test_ready_at_the_migrations_head(gw: Harness) -> None:
    r = await gw.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"
    assert r.headers["x-request-id"]


async def test_not_ready_on_a_schema_of_another_release(gw: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "head_revisions", lambda: frozenset({"9999"}))  # the code expects a newer schema
    r = await gw.client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "unavailable",
        "checks": {"database": "not at the migrations' head", "upstream_keys": "ok"},
    }
