"""What SQLAlchemy costs the submit's two statements, in-process: CPU per submit, SQLAlchemy against a bypass.

A submit writes twice (app/tasks/service.py): the admission (row, reservation and key slot in one statement,
app/tasks/admission.py) and the upstream's answer (`repository.apply_update_to`). Both run as SQLAlchemy Core
statements on a connection of the autocommit engine (app/core/db/engine.autocommit_engine). This script runs the
same two statements, with the same parameters, two ways, alternating batch by batch, and reports this process's CPU
per submit (user + system, from getrusage) for each:

- `sqlalchemy`: what the gateway runs (`async with autocommit.connect()`, `connection.execute`);
- `driver`: the bypass the issue allows if measured (issue 20, item 3): the same compiled SQL and bind processing,
  sent with asyncpg's `fetchval` / `execute` on the driver connection of a connection checked out from the same
  pool (`AsyncConnection.get_raw_connection().driver_connection`, public APIs). What it would give up: SQLAlchemy's
  statement events (tracing spans, the outage recovery hook) and its error translation (IntegrityError,
  invalidation of a lost connection), which it would have to write again.

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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # type: ignore[import-untyped]  # noqa: E402
from sqlalchemy import TextClause  # noqa: E402
from sqlalchemy.engine import Dialect  # noqa: E402
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


class Compiled:
    """A text statement compiled once for the dialect, with its parameters' bind processors in positional order
    (public APIs: ClauseElement.compile, Compiled.binds / positiontup, TypeEngine.dialect_impl / bind_processor)."""

    def __init__(self, clause: TextClause, dialect: Dialect) -> None:
        compiled = clause.compile(dialect=dialect)
        self.sql = compiled.string
        self.binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            self.binds.append((name, bind.type.dialect_impl(dialect).bind_processor(dialect), bind.value))

    def args(self, params: dict[str, Any]) -> list[Any]:
        values = []
        for name, processor, default in self.binds:
            value = params.get(name, default)
            values.append(processor(value) if processor is not None and value is not None else value)
        return values


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
    compiled = {
        "admit": Compiled(admission._WITH_QUOTA, engine.dialect),
        "answer": Compiled(update, engine.dialect),
    }

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

    async def sqlalchemy() -> None:
        t, r = task()
        async with autocommit.connect() as connection:
            assert await admission.admit(connection, t, r, "upk_bench", check_sent=now, check_waiting=now)
        async with autocommit.connect() as connection:
            assert await repo.apply_update_to(connection, t, answer)

    async def driver() -> None:
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
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            admit = compiled["admit"]
            assert await raw.fetchval(admit.sql, *admit.args(params))
        async with autocommit.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            write = compiled["answer"]
            assert await raw.execute(write.sql, *write.args({**answer, "_id": t.id})) == "UPDATE 1"

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
