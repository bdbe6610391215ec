"""A revocation whose transaction commits after later changes still reaches the other replica within the bound.

PostgreSQL hands out an invalidation event's id when the row is inserted, not when its transaction commits. Two real
`serve` replicas on one PostgreSQL, a key warm on both: a lock held in another connection (as an operator's psql
session would) stops the revocation through A after it has written its event and before it commits; meanwhile a later
change (another key revoked, with its event) commits and B is seen to have read it; then the lock goes and the
revocation commits with the lower id. B must refuse the revoked key within the bound, as it would any other change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db.engine import create_engine, create_session_factory
from app.core.invalidation import record
from app.models import TenantKey
from tests.e2e.conftest import Processes, Sandbox, gateway_env, http_client, start_gateways
from tests.e2e.test_key_changes_reach_replicas import BOUND_S, SLACK_S, _refused_within, _status

pytestmark = pytest.mark.e2e

# Deadlines for what a busy CI machine may take (a blocked request to show up in pg_locks, a poll loop to come
# round): they cost time only when something is broken.
DEADLINE_S = 30.0
# The revocation writes its invalidation event, then its audit event: holding this lock stops it between the two.
HOLD_AUDIT = text("LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE")
# A transaction that has written an invalidation event and waits for the audit table.
WAITING_WITH_AN_EVENT = text(
    "SELECT count(*) FROM pg_locks AS waiting JOIN pg_locks AS wrote ON wrote.pid = waiting.pid"
    " WHERE waiting.relation = 'audit_events'::regclass AND NOT waiting.granted"
    " AND wrote.relation = 'invalidation_events'::regclass AND wrote.granted AND wrote.mode = 'RowExclusiveLock'"
)


@pytest.fixture
async def sessions(clean_postgres: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Connections of the test itself to the replicas' database: the lock holder and the later change."""
    engine = create_engine(clean_postgres, pool_size=2)
    yield create_session_factory(engine)
    await engine.dispose()


async def _until_blocked_on_audit(holder: AsyncSession, revoking: asyncio.Task[object]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await holder.scalar(WAITING_WITH_AN_EVENT):
        assert not revoking.done(), f"the revocation did not wait for the lock: {revoking.result()!r}"
        assert time.monotonic() < deadline, "the revocation never waited for the lock with its event written"
        await asyncio.sleep(0.05)


async def test_a_revocation_committed_after_later_changes_reaches_the_other_replica(
    clean_postgres: str, sandbox: Sandbox, processes: Processes, sessions: async_sessionmaker[AsyncSession]
) -> None:
    env = gateway_env(clean_postgres, sandbox.url)
    pending = processes.spawn_tenant("acme", env)
    a, b = start_gateways(processes, env, ["replica-a", "replica-b"])
    tenant = a.tenant(pending)
    admin = {"Authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
    async with http_client() as client:
        created = await client.post(f"{a.url}/admin/v1/tenants/{tenant.id}/keys", headers=admin, json={"name": "k2"})
        assert created.status_code == 201, created.text
        later_key = created.json()
        keys = (await client.get(f"{a.url}/admin/v1/tenants/{tenant.id}/keys", headers=admin)).json()["data"]
        key_id = next(k["id"] for k in keys if k["id"] != later_key["id"])
        for replica in (a, b):  # warm: each replica now knows both keys without reading the database
            for key in (tenant.key, later_key["key"]):
                assert await _status(client, replica, key) == 200

        async with sessions() as holder:
            await holder.execute(HOLD_AUDIT)
            revoking = asyncio.create_task(client.delete(f"{a.url}/admin/v1/keys/{key_id}", headers=admin))
            await _until_blocked_on_audit(holder, revoking)  # its event has its id, uncommitted

            # A later change commits first, with a higher id; B refusing its key shows B has read past the revocation.
            async with sessions.begin() as session:
                await session.execute(
                    update(TenantKey).where(TenantKey.id == later_key["id"]).values(revoked_at=utcnow())
                )
                await record(session, "tenant_key", later_key["id"], now=utcnow())
            await _refused_within(client, b, later_key["key"], time.monotonic())
            assert await _status(client, b, tenant.key) == 200  # the revocation has not committed yet

            await holder.rollback()  # the lock goes: the revocation commits, with the lower id
            revoked = await asyncio.wait_for(revoking, DEADLINE_S)
        answered = time.monotonic()
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None

        assert await _status(client, a, tenant.key) == 401
        assert await _refused_within(client, b, tenant.key, answered) <= BOUND_S + SLACK_S
