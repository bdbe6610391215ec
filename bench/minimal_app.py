"""The reference of bench/hot_path.py: the fastest an answer can come from this stack on this machine.

A FastAPI app under one uvicorn worker (the gateway's uvicorn settings: uvloop and httptools when installed, no
access log, no server header) answering a fixed JSON body of a completed task's size for `GET /task` and
`POST /task` (the POST reads and parses its JSON body, as a create call must).

    .venv/bin/python bench/minimal_app.py --port 8300
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

BODY: dict[str, Any] = {
    "id": "task_img_0123456789abcdef0123456789abcdef",
    "object": "image.generation.task",
    "model": "doubao-seedream-4-0",
    "status": "completed",
    "progress": 100,
    "created_at": 1780000000,
    "completed_at": 1780000003,
    "expires_at": 1780086403,
    "result": {"data": [{"url": "http://127.0.0.1:8100/files/img_0123456789abcdef.png?token=abcdef0123456789"}]},
}

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/task")
async def get_task() -> JSONResponse:
    return JSONResponse(BODY)


@app.post("/task")
async def create_task(request: Request) -> JSONResponse:
    await request.json()
    return JSONResponse(BODY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, server_header=False)


if __name__ == "__main__":
    main()
