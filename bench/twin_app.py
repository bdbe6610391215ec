"""The submit's plain twin, a reference of bench/hot_path.py: the same I/O per submit as the gateway's, written the
plain way, with none of the gateway's rules (no keys, quotas, key slots, settling, idempotency, metrics, logs).

FastAPI validates the body with a pydantic model; one INSERT of the task row (SQLAlchemy Core on an AsyncEngine,
asyncpg); one POST to the upstream's create call (httpx with the aiohttp transport, as the gateway's upstream client);
one UPDATE with the upstream's answer; the task as JSON. Under `uvicorn --workers N` with the gateway's uvicorn
settings (uvloop and httptools when installed, no access log, no server header).

    .venv/bin/python bench/twin_app.py --port 8400 --workers 2 \
        --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test --upstream http://127.0.0.1:8100 --key sk-...
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel, Field
from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, insert, update
from sqlalchemy.ext.asyncio import create_async_engine

metadata = MetaData()
tasks = Table(
    "twin_tasks",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("upstream_id", String(128)),
    Column("status", String(16)),
    Column("request", JSON),
    Column("created_at", DateTime(timezone=True)),
)


class CreateRequest(BaseModel):
    model: str = "doubao-seedream-4-0"
    prompt: str = Field(min_length=1, max_length=1000)
    size: str = "1:1"
    n: int = Field(default=1, ge=1, le=15)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(os.environ["TWIN_DATABASE_URL"], pool_size=20)
    client = httpx.AsyncClient(
        base_url=os.environ["TWIN_UPSTREAM_URL"],
        headers={"Authorization": f"Bearer {os.environ['TWIN_UPSTREAM_KEY']}"},
        timeout=httpx.Timeout(30.0, connect=5.0),
        transport=AiohttpTransport(),
    )
    app.state.engine, app.state.client = engine, client
    yield
    await client.aclose()
    await engine.dispose()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/images/generations")
async def create(body: CreateRequest) -> dict[str, Any]:
    task_id = "task_img_" + uuid.uuid4().hex
    request = body.model_dump()
    engine = app.state.engine
    async with engine.begin() as conn:
        await conn.execute(
            insert(tasks).values(id=task_id, status="submitting", request=request, created_at=dt.datetime.now(dt.UTC))
        )
    answer = await app.state.client.post("/v1/images/generations", json=request)
    if answer.status_code != 200:
        raise HTTPException(502, "upstream error")
    upstream = answer.json()
    async with engine.begin() as conn:
        await conn.execute(
            update(tasks).where(tasks.c.id == task_id).values(upstream_id=upstream["id"], status=upstream["status"])
        )
    return {**upstream, "id": task_id}


async def create_table(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    os.environ.update(TWIN_DATABASE_URL=args.database_url, TWIN_UPSTREAM_URL=args.upstream, TWIN_UPSTREAM_KEY=args.key)
    asyncio.run(create_table(args.database_url))  # once, before the workers (concurrent CREATEs collide)
    uvicorn.run(
        "twin_app:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
