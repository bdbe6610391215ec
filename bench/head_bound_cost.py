"""What the bounded request head (app/core/http_protocol.py) costs a request: uvicorn's httptools protocol against
the bounded one, in process, CPU time per request of an ordinary GET (parse, ASGI task, a two-message answer).

    .venv/bin/python bench/head_bound_cost.py           # ~10 s; prints the medians of 7 alternating rounds

No sockets and no load generator, so the machine's other load moves both rows alike: the difference is the cost.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from app.core.http_protocol import BoundedHttpToolsProtocol

REQUESTS = 20_000
ROUNDS = 7
REQUEST = (
    b"GET /v1/images/generations/task_img_0123456789abcdef HTTP/1.1\r\nHost: gateway\r\n"
    b"Authorization: Bearer sk-gw-0123456789abcdef0123456789abcdef0123\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def per_request_us(protocol_class: Any) -> float:
    config = Config(app=app, http=protocol_class, log_level="critical", access_log=False)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Transport())
    started = time.process_time()
    for _ in range(REQUESTS):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's ASGI task runs and answers
        await asyncio.sleep(0)
    return (time.process_time() - started) / REQUESTS * 1e6


async def main() -> None:
    rows: dict[str, list[float]] = {"uvicorn's httptools protocol": [], "bounded (app/core/http_protocol.py)": []}
    for _ in range(ROUNDS):
        rows["uvicorn's httptools protocol"].append(await per_request_us(HttpToolsProtocol))
        rows["bounded (app/core/http_protocol.py)"].append(await per_request_us(BoundedHttpToolsProtocol))
    print("| protocol | CPU µs per request, median | rounds |")
    print("|---|--:|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    uvloop.run(main())
