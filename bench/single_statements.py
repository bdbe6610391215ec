"""What SQLAlchemy's execution layer costs the submit's two statements, in-process: CPU per submit, two ways.

A submit writes twice (app/tasks/service.py): the admission (row, reservation and key slot in one statement,
app/tasks/admission.py) and the upstream's answer (`repository.apply_update_to`), each on a connection of the
autocommit engine (app/core/db/engine.autocommit_engine). This script runs the same two statements, with the same
parameters, two ways, alternating batch by batch, and reports this process's CPU per submit (user + system, from
getrusage) for each:

- `driver`: what the gateway runs: `admission.admit` and `repository.apply_update_to`, which send the statements
  on the driver's connection (app/core/db/driver.Statement: compiled once by SQLAlchemy, SQLAlchemy's errors, the
  tracker and span hooks);
- `sqlalchemy`: the same statements through SQLAlchemy's execution layer (`connection.execute`), the way the
  gateway sent them before; the difference is the reason app/core/db/driver.py exists.

Usage: .venv/bin/python bench/single_statements.py [--database-url URL] [--submits 1500] [--rounds 5]
It creates, migrates and drops a database of its own on that server. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # type: ignore[import-untyped]  # noqa: E402
from sqlalchemy.engine.url import make_url  # noqa: E402

from app.core.db import migrate  # noqa: E402
from app.core.db.engine import autocommit_engine, create_engine, create_session_factory  # noqa: E402
from app.core.ids import new_id  # noqa: E402
from app.models import Tenant, UpstreamKey  # noqa: E402
from app.models.task import Task, TaskStatus  # noqa: E402
from app.quotas.repository import Reservation  # noqa: E402
from app.tasks import admission  # noqa: E402
from app.tasks import repository as repo  # noqa: E402

DEFAULT_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(url: str, submits: int, rounds: int) -> dict[str, list[float]]:
    engine = create_engine(url, pool_size=2)
    sessions = create_session_factory(engine)
    autocommit = autocommit_engine(engine)
    now = dt.datetime.now(dt.UTC)
    async with sessions.begin() as session:
        session.add(Tenant(id="ten_bench", name="bench", created_at=now, updated_at=now))
        session.add(
            UpstreamKey(
                id="upk_bench",
                name="bench",
                fingerprint="bench",
                secret_encrypted="-",
                enc_key_id="-",
                status="active",
                weight=1,
                in_flight=0,
                consecutive_errors=0,
                created_at=now,
                updated_at=now,
            )
        )
    answer = {"status": TaskStatus.QUEUED, "progress": 0, "updated_at": now, "upstream_task_id": "up_1"}
    update = repo._update_open(frozenset(answer), returning=False)

    def task() -> tuple[Task, Reservation]:
        t = Task(
            id=new_id("task_img_"),
            tenant_id="ten_bench",
            model="doubao-seedream-4-0",
            request={"prompt": "bench", "n": 1},
            n=1,
            status=TaskStatus.SUBMITTING,
            progress=0,
            created_at=now,
            updated_at=now,
            deadline_at=now,
        )
        r = Reservation("ten_bench", t.id, 1, "2026-12-07", "2026-12", now, None, None, None)
        return t, r

    async def driver() -> None:  # what the gateway runs (app/core/db/driver.py)
        t, r = task()
        async with autocommit.connect() as connection:
            assert await admission.admit(connection, t, r, "upk_bench", check_sent=now, check_waiting=now)
        async with autocommit.connect() as connection:
            assert await repo.apply_update_to(connection, t, answer)

    async def sqlalchemy() -> None:  # the same two statements through SQLAlchemy's execution layer
        t, r = task()
        params = admission._column_values(t)
        params.update(
            key_id="upk_bench",
            slot_now=now,
            status_sent=TaskStatus.SUBMITTING.value,
            status_waiting=TaskStatus.WAITING.value,
            check_sent=now,
            check_waiting=now,
        )
        params.update(r.params())
        async with autocommit.connect() as connection:
            assert (await connection.execute(admission._WITH_QUOTA.clause, params)).scalar()
        async with autocommit.connect() as connection:
            assert (await connection.execute(update, {**answer, "_id": t.id})).rowcount == 1

    ways: dict[str, Callable[[], Awaitable[None]]] = {"sqlalchemy": sqlalchemy, "driver": driver}
    per_submit: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for way in ways.values():  # warm-up: compiled caches, prepared statements
            for _ in range(100):
                await way()
        for round_ in range(rounds):
            order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
            for name in order:
                start = cpu()
                for _ in range(submits):
                    await ways[name]()
                per_submit[name].append((cpu() - start) / submits * 1e6)
    finally:
        await engine.dispose()
    return per_submit


async def create_database(url: str) -> str:
    made = make_url(url)
    name = f"bench_single_{uuid.uuid4().hex[:8]}"
    server = made.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    connection = await asyncpg.connect(server)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return made.set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    made = make_url(url)
    server = made.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    connection = await asyncpg.connect(server)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{made.database}" WITH (FORCE)')
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--submits", type=int, default=1500, help="submits per batch")
    parser.add_argument("--rounds", type=int, default=5, help="batches of each way, alternating")
    args = parser.parse_args()
    url = asyncio.run(create_database(args.database_url))
    try:
        migrate.upgrade(url)
        per_submit = asyncio.run(run(url, args.submits, args.rounds))
    finally:
        asyncio.run(drop_database(url))
    reference = statistics.median(per_submit["driver"])
    print("| way | CPU µs per submit (its two statements), median | rounds | against `driver` |")
    print("|---|--:|---|--:|")
    for name, values in per_submit.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {median:.0f} | {rounds} | {median - reference:+.0f} µs |")


if __name__ == "__main__":
    main()
