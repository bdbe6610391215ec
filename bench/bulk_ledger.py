"""A bulk-generated ledger for bench/scale.py: tenants, keys, tasks, quota entries and counters, webhook deliveries,
written with SQL (`INSERT ... SELECT ... FROM generate_series`) straight into a migrated database.

The shape (see `Shape`): `total` tasks created over the last DAYS days, in created_at order (as the heap of a real
ledger is), with ids minted from created_at as the app mints them (`task_img_` + 12 hex digits of milliseconds + 20
of randomness), so new submits land at the right end of the primary key as they would. Every `k`-th task belongs to
the bench tenant (made by the CLI beforehand, so its key works) and is completed; every value of a row is a function
of its number i and the run's `now`, so the bench tenant's rows come out the same, ids included, whether they are
generated alone (the empty ledger) or among all the others (the full one).

The other tenants' tasks are spread with a skew (tenant index = others x u², u uniform: the first tenants are large,
the last ones still have about half the average); 7 % of them failed, the newest `open_count` open (queued or in
progress), the rest completed; n = 1 (80 %), 2 or 4 images. Each task has its `reserve` quota entry and, once
terminal, its `settle` entry; the day, month and in-flight counters are then summed from the entries, so
`quota check` balances. One tenant in ten has a webhook: its terminal tasks have one delivered webhook delivery each.

The schema may have grown since this was written: the columns are read from information_schema, the known ones are
filled, unknown ones are left to their defaults (listed in the report), and an unknown NOT NULL column without a
default stops the run with its name.

Open tasks must not be acted on during the run (the sandbox never issued their upstream ids, and thousands of
due tasks are not what a real ledger holds at one moment): they look refreshed and due 30 days ahead, so the poller
and the reconciler leave them alone while their queries still have to skip past them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from common import BenchError, plain_url

DAYS = 90  # the tasks were created over the last DAYS days
FAILED_FRACTION = 0.07
FUTURE = "to_timestamp($5::float8 + 30 * 86400)"  # "not due during the run"

# One uniform number in [0, 1) from hex digits of the row's md5 hash h.
_U32 = "(('x' || substr(h, {at}, 8))::bit(32)::bigint / 4294967296.0)"
_U16 = "(('x' || substr(h, {at}, 4))::bit(16)::int / 65536.0)"


@dataclass(frozen=True)
class Shape:
    """What the generator makes: `total` tasks in created_at order, every `k`-th the bench tenant's (completed)."""

    total: int
    tenants: int
    k: int
    open_count: int
    now: float  # epoch seconds: every timestamp is relative to it

    @property
    def bench_tasks(self) -> int:
        return (self.total + self.k - 1) // self.k

    @property
    def others(self) -> int:
        return self.tenants - 1


@dataclass
class Generated:
    """What generate() did: row counts, the time of each step, sizes, and the columns it left to their defaults."""

    tenants: int = 0
    tasks: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    sizes: list[dict[str, Any]] = field(default_factory=list)
    index_sizes: list[dict[str, Any]] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)


# --- the rows, column by column --------------------------------------------------------------------------------

# The other tenants, numbered 0..others-1, in a temporary table of the generating connection.
BULK_TENANTS_SQL = """
CREATE TEMP TABLE bulk_tenants (idx int PRIMARY KEY, id text, key_id text, created_at timestamptz, webhook boolean)
"""
FILL_BULK_TENANTS_SQL = """
INSERT INTO bulk_tenants (idx, id, key_id, created_at, webhook)
SELECT g, 'ten_' || lpad(to_hex(floor(extract(epoch FROM c) * 1000)::bigint), 12, '0')
              || substr(md5('tenant:' || g), 1, 20),
       'key_' || lpad(to_hex(floor(extract(epoch FROM c) * 1000)::bigint), 12, '0')
              || substr(md5('key:' || g), 1, 20),
       c, g % 10 = 3
FROM generate_series(0, {others} - 1) AS g,
     LATERAL (SELECT to_timestamp($1::float8 - 400 * 86400 + g * (300.0 * 86400 / {others}))) AS t(c)
"""

TENANT_COLUMNS = {
    "id": "id",
    "name": "'bulk-' || lpad(idx::text, 6, '0')",
    "status": "'active'",
    "daily_images": "CASE WHEN idx % 10 = 0 THEN 5000 END",
    "monthly_images": "CASE WHEN idx % 10 = 0 THEN 100000 END",
    "max_in_flight": "CASE WHEN idx % 10 = 0 THEN 50 END",
    "submit_rpm": "CASE WHEN idx % 20 = 0 THEN 600 END",
    "query_rpm": "NULL",
    "created_at": "created_at",
    "updated_at": "created_at",
    "webhook_url": "CASE WHEN webhook THEN 'https://hooks.tenant-' || idx || '.example.com/seedream' END",
    # A placeholder: nothing in the run signs for these tenants.
    "webhook_secret": "CASE WHEN webhook THEN 'whsec_' || md5('whsec:' || idx) END",
}
KEY_COLUMNS = {
    "id": "key_id",
    "tenant_id": "id",
    "key_hash": "md5('hash:' || idx) || md5('hash2:' || idx)",
    "hash_key_id": "$2::text",
    "prefix": "'sk-gw-' || substr(md5('p:' || idx), 1, 4)",
    "name": "''",
    "scopes": "'submit,read'",
    "created_at": "created_at",
    "last_used_at": "to_timestamp($1::float8 - (idx % 3600))",
}
AUDIT_COLUMNS = {
    "created_at": "created_at",
    "actor": "'cli'",
    "action": "'tenant.create'",
    "target_type": "'tenant'",
    "target_id": "id",
    "outcome": "'ok'",
    "detail": "json_build_object('name', 'bulk-' || lpad(idx::text, 6, '0'), 'key_id', key_id)",
}

# The rows i = lo, lo+step, ..., hi of the ledger's sequence 0..total-1, everything a later insert needs.
# $1 the bench tenant's id, $2 lo, $3 hi, $4 step, $5 now (epoch seconds).
SOURCE_SQL = """
r AS (
    SELECT i, h, i % {k} = 0 AS bench,
           to_timestamp($5::float8 - {days} * 86400 + (i + 0.5) * ({days}.0 * 86400 / {total})) AS created_at,
           {u_tenant} AS u_t, {u_status} AS u_s, {u_n} AS u_n
    FROM (SELECT i, md5(i::text || ':scale') AS h FROM generate_series($2::bigint, $3::bigint, $4::bigint) AS i) s
), g AS (
    SELECT r.*,
           CASE WHEN bench THEN 'completed'
                WHEN i >= {open_from} THEN CASE WHEN u_s < 0.3 THEN 'queued' ELSE 'in_progress' END
                WHEN u_s < {failed} THEN 'failed' ELSE 'completed' END AS state,
           CASE WHEN u_n < 0.8 THEN 1 WHEN u_n < 0.9 THEN 2 ELSE 4 END AS n,
           created_at + make_interval(secs => 5 + i % 40) AS done_at,
           floor({others} * u_t * u_t)::int AS tidx
    FROM r
), src AS (
    SELECT g.*,
           'task_img_' || lpad(to_hex(floor(extract(epoch FROM created_at) * 1000)::bigint), 12, '0')
                       || substr(h, 1, 20) AS task_id,
           CASE WHEN g.bench THEN $1::text ELSE b.tenant_ref END AS tenant_id,
           coalesce(b.tenant_webhook, false) AS webhook,
           state IN ('completed', 'failed') AS terminal,
           CASE WHEN state = 'completed' THEN (
               SELECT json_agg('https://ark-content.example.com/seedream/' || to_char(created_at, 'YYYYMMDD') || '/'
                               || substr(h, 1, 24) || '-' || j || '.jpeg?X-Expires=86400&X-Signature='
                               || md5(h || j))
               FROM generate_series(1, n) AS j) END AS urls,
           (ARRAY['A watercolor painting of', 'A photo of', 'A 3D render of', 'A pencil sketch of'])[1 + i % 4]
           || ' a lighthouse on a cliff at dusk, soft light, highly detailed, variation ' || substr(h, 9, 16)
           AS prompt,
           (ARRAY['1:1', '4:3', '3:4', '16:9', '9:16'])[1 + (i / 7) % 5] AS size
    FROM g LEFT JOIN (SELECT idx, id AS tenant_ref, webhook AS tenant_webhook FROM bulk_tenants) AS b
           ON NOT g.bench AND b.idx = g.tidx
)"""

TASK_COLUMNS = {
    "id": "task_id",
    "tenant_id": "tenant_id",
    "upstream_task_id": "'img_' || md5(h)",
    "upstream_key_id": "NULL",  # the key that made them has been rotated out since (ON DELETE SET NULL)
    "model": "'doubao-seedream-4-0'",
    "request": """CASE WHEN n = 1
        THEN json_build_object('model', 'doubao-seedream-4-0', 'prompt', prompt, 'size', size, 'n', n)
        ELSE json_build_object('model', 'doubao-seedream-4-0', 'prompt', prompt, 'size', size, 'n', n,
            'metadata', json_build_object('sequential_image_generation', 'auto',
                'sequential_image_generation_options', json_build_object('max_images', n))) END""",
    "n": "n",
    "status": "state",
    "progress": "CASE state WHEN 'completed' THEN 100 WHEN 'failed' THEN 0 ELSE (i % 9) * 10 END",
    "result_urls": "urls",
    "error_code": """CASE WHEN state = 'failed'
        THEN (ARRAY['generation_failed', 'content_policy_violation', 'upstream_error', 'timeout'])[1 + i % 4] END""",
    "error_message": "CASE WHEN state = 'failed' THEN 'The image could not be generated.' END",
    "client_business_id": "CASE WHEN (i / 3) % 4 = 0 THEN 'order-' || substr(h, 13, 16) END",
    "created_at": "created_at",
    "updated_at": "CASE WHEN terminal THEN done_at ELSE created_at + interval '1 second' END",
    "completed_at": "CASE WHEN terminal THEN done_at END",
    "expires_at": "CASE WHEN state = 'completed' THEN done_at + interval '24 hours' END",
    "refreshed_at": f"CASE WHEN terminal THEN done_at ELSE {FUTURE} END",
    # The task lifecycle's columns (migration 0004), when the schema has them.
    "idempotency_key": "CASE WHEN i % 4 = 1 THEN 'idem-' || substr(h, 5, 24) END",
    "request_hash": "CASE WHEN i % 4 = 1 THEN md5(h || ':r') || md5(h || ':s') END",
    "next_check_at": f"CASE WHEN terminal THEN NULL ELSE {FUTURE} END",
    "attempts": "1",
    "deadline_at": f"CASE WHEN terminal THEN created_at + interval '30 minutes' ELSE {FUTURE} END",
    "outcome_unknown": "false",
}
ENTRY_COLUMNS = {
    "tenant_id": "tenant_id",
    "task_id": "task_id",
    "kind": "e.kind",
    "images": "e.images",
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "month": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')",
    "created_at": "e.at",
}
ENTRY_FROM = """src CROSS JOIN LATERAL (VALUES ('reserve', n, created_at),
                                      ('settle', CASE WHEN state = 'completed' THEN 0 ELSE -n END, done_at))
                AS e(kind, images, at)
WHERE e.kind = 'reserve' OR terminal"""
DELIVERY_COLUMNS = {
    "id": "'evt_' || lpad(to_hex(floor(extract(epoch FROM done_at) * 1000)::bigint), 12, '0') || substr(md5(h), 1, 20)",
    "tenant_id": "tenant_id",
    "task_id": "task_id",
    "event_type": "'generation.' || state",
    "url": "'https://hooks.tenant-' || tidx || '.example.com/seedream'",
    "body": """json_build_object('type', 'generation.' || state, 'created_at', floor(extract(epoch FROM done_at)),
        'data', json_build_object('id', task_id, 'model', 'doubao-seedream-4-0', 'status', state,
            'created_at', floor(extract(epoch FROM created_at)), 'completed_at', floor(extract(epoch FROM done_at)),
            'result', json_build_object('type', 'image', 'data', urls)))::text""",
    "status": "'delivered'",
    "attempts": "1",
    "last_status_code": "200",
    "created_at": "done_at",
    "updated_at": "done_at + interval '1 second'",
    "delivered_at": "done_at + interval '1 second'",
}

# Every counter as the app keeps it: the sum of its entries (day, month), reserves minus settles (in flight).
COUNTERS_SQL = """
INSERT INTO quota_counters (tenant_id, period, amount)
SELECT tenant_id,
       CASE WHEN GROUPING(day) = 0 THEN 'day:' || day WHEN GROUPING(month) = 0 THEN 'month:' || month
            ELSE 'inflight' END,
       CASE WHEN GROUPING(day) = 0 OR GROUPING(month) = 0 THEN sum(images)
            ELSE sum(CASE WHEN kind = 'reserve' THEN 1 ELSE -1 END) END
FROM quota_entries
GROUP BY GROUPING SETS ((tenant_id, day), (tenant_id, month), (tenant_id))
"""

COLUMNS_SQL = """
SELECT table_name, column_name, is_nullable = 'YES' AS nullable, column_default IS NOT NULL AS has_default,
       is_identity = 'YES' AS identity
FROM information_schema.columns WHERE table_schema = 'public'
"""

SIZES_SQL = """
SELECT c.relname AS name, greatest(c.reltuples, 0)::bigint AS rows, pg_relation_size(c.oid) AS heap,
       pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r'
ORDER BY pg_total_relation_size(c.oid) DESC, c.relname
"""

INDEX_SIZES_SQL = """
SELECT t.relname AS table_name, i.relname AS name, pg_relation_size(i.oid) AS size
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public'
ORDER BY pg_relation_size(i.oid) DESC, i.relname
"""


@dataclass(frozen=True)
class Column:
    nullable: bool
    has_default: bool


Schema = dict[str, dict[str, Column]]


def insert_sql(
    table: str, known: Mapping[str, str], schema: Schema, defaulted: list[str], source: str, order: str = ""
) -> str:
    """`INSERT INTO table (...) SELECT ... FROM source` over the known columns the table has; the table's other
    columns are left to their defaults (noted in `defaulted`), unless one must be given a value: BenchError."""
    columns = schema.get(table)
    if not columns:
        raise BenchError(f"the migrated schema has no table {table}")
    names = [name for name in known if name in columns]
    for name, column in columns.items():
        if name in known:
            continue
        if not column.nullable and not column.has_default:
            raise BenchError(
                f"{table}.{name} is NOT NULL without a default and bench/bulk_ledger.py does not know it: "
                "add it to the generator"
            )
        defaulted.append(f"{table}.{name}")
    select = ",\n       ".join(known[name] for name in names)
    return f"INSERT INTO {table} ({', '.join(names)})\nSELECT {select}\nFROM {source}{order}"


def chunk_sql(shape: Shape, schema: Schema, defaulted: list[str]) -> str:
    """One statement: the rows lo..hi (step) as tasks, their quota entries and webhook deliveries."""
    source = SOURCE_SQL.format(
        k=shape.k,
        days=DAYS,
        total=shape.total,
        others=max(shape.others, 1),
        open_from=shape.total - shape.open_count,
        failed=FAILED_FRACTION,
        u_tenant=_U32.format(at=21),
        u_status=_U16.format(at=29),
        u_n=_U16.format(at=25),
    )
    parts = [
        source,
        "t AS (" + insert_sql("tasks", TASK_COLUMNS, schema, defaulted, "src", "\nORDER BY i") + ")",
    ]
    if "webhook_deliveries" in schema:
        deliveries = insert_sql(
            "webhook_deliveries", DELIVERY_COLUMNS, schema, defaulted, "src WHERE webhook AND terminal", "\nORDER BY i"
        )
        parts.append("w AS (" + deliveries + ")")
    entries = insert_sql("quota_entries", ENTRY_COLUMNS, schema, defaulted, ENTRY_FROM)
    return "WITH " + ",\n".join(parts) + "\n" + entries


async def read_schema(conn: Any) -> Schema:
    schema: Schema = {}
    for row in await conn.fetch(COLUMNS_SQL):
        has_default = bool(row["has_default"]) or bool(row["identity"])
        schema.setdefault(row["table_name"], {})[row["column_name"]] = Column(bool(row["nullable"]), has_default)
    return schema


async def generate(
    url: str,
    bench_tenant_id: str,
    shape: Shape,
    chunk: int,
    *,
    bench_only: bool,
    report: Callable[[str], None],
) -> Generated:
    """Fill a migrated database that holds the bench tenant (made by the CLI): the other tenants with their keys
    and audit rows unless bench_only, the tasks with their quota entries (and webhook deliveries), the counters;
    then VACUUM (ANALYZE) and CHECKPOINT, so that neither (auto)vacuum nor a checkpoint lands in the measurements."""
    done = Generated()
    conn = await asyncpg.connect(plain_url(url), timeout=10, command_timeout=None)
    try:
        # Foreign keys are not checked row by row (the rows are consistent by construction): a bulk load's
        # setting, which changes nothing in the tables or their indexes.
        try:
            await conn.execute("SET session_replication_role = replica")
        except asyncpg.InsufficientPrivilegeError:
            report("not a superuser: foreign keys are checked row by row (a slower load, the same tables)")
        await conn.execute("SET work_mem = '256MB'")
        await conn.execute("SET maintenance_work_mem = '1GB'")
        schema = await read_schema(conn)
        hash_key_id = await conn.fetchval(
            "SELECT hash_key_id FROM tenant_keys WHERE tenant_id = $1 LIMIT 1", bench_tenant_id
        )
        started = time.monotonic()
        await conn.execute(BULK_TENANTS_SQL)
        if not bench_only:
            await conn.execute(FILL_BULK_TENANTS_SQL.format(others=shape.others), shape.now)
            await conn.execute("ANALYZE bulk_tenants")
            for table, known, params in (
                ("tenants", TENANT_COLUMNS, ()),
                ("tenant_keys", KEY_COLUMNS, (shape.now, hash_key_id)),
                ("audit_events", AUDIT_COLUMNS, ()),
            ):
                sql = insert_sql(table, known, schema, done.defaulted, "bulk_tenants", "\nORDER BY idx")
                await conn.execute(sql, *params)
        done.timings["tenants, keys, audit rows"] = time.monotonic() - started
        sql = chunk_sql(shape, schema, done.defaulted)
        step = shape.k if bench_only else 1
        span = chunk * step
        started = time.monotonic()
        for lo in range(0, shape.total, span):
            hi = min(lo + span, shape.total) - 1
            async with conn.transaction():
                await conn.execute(sql, bench_tenant_id, lo, hi, step, shape.now)
            elapsed = time.monotonic() - started
            rows, goal = hi // step + 1, (shape.bench_tasks if bench_only else shape.total)
            rate = rows / elapsed if elapsed else 0.0
            left = (goal - rows) / rate if rate else 0.0
            report(
                f"tasks: {rows:,}/{goal:,} ({rows / goal:.0%}), {rate:,.0f} tasks/s, {elapsed:.0f} s, "
                f"about {left:.0f} s to go"
            )
        done.timings["tasks, quota entries, deliveries"] = time.monotonic() - started
        started = time.monotonic()
        if await conn.fetchval("SELECT count(*) FROM quota_counters"):
            raise BenchError("the ledger has quota counters before they are computed")
        await conn.execute(COUNTERS_SQL)
        done.timings["quota counters"] = time.monotonic() - started
        done.tenants = int(await conn.fetchval("SELECT count(*) FROM tenants"))
        done.tasks = int(await conn.fetchval("SELECT count(*) FROM tasks"))
        started = time.monotonic()
        await conn.execute("VACUUM (ANALYZE)")
        done.timings["VACUUM (ANALYZE)"] = time.monotonic() - started
        started = time.monotonic()
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            report("not allowed to CHECKPOINT: a checkpoint may land in the measurements")
        done.timings["CHECKPOINT"] = time.monotonic() - started
        done.sizes = [dict(r) for r in await conn.fetch(SIZES_SQL)]
        done.index_sizes = [dict(r) for r in await conn.fetch(INDEX_SIZES_SQL)]
    finally:
        await conn.close()
    done.defaulted = sorted(set(done.defaulted))
    return done
