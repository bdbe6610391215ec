"""An ASGI app (the sandbox, in tests) served on a loopback port by uvicorn's own HTTP protocol, inside the running
event loop: what the gateway's upstream session (aiohttp, which has no in-process transport) talks to in the API
tests. No process and no thread, so the app keeps the test's fake clock and state; starting and stopping take a few
milliseconds (uvicorn.Server would add its 0.1 s ticks to every test's teardown).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.server import ServerState

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port of this event loop until the block ends: its base URL."""
    # No lifespan (an ASGI transport runs none either), no logging configuration (the tests' own handlers stay).
    config = Config(app=app, lifespan="off", log_config=None, access_log=False, proxy_headers=False)
    config.load()
    state = ServerState()

    def protocol() -> asyncio.Protocol:
        made: asyncio.Protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
        return made

    server = await asyncio.get_running_loop().create_server(protocol, host=HOST, port=0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.close()
        for connection in list(state.connections):
            connection.shutdown()  # idle keep-alive connections close now, busy ones after their answer
        running = list(state.tasks)
        for task in running:  # a request still in the app when its test ended
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


@contextlib.contextmanager
def served_in_thread(app: ASGIApp) -> Iterator[str]:
    """`served`, for a caller without an event loop (or whose loop ends before the app must): in a thread's own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="served-asgi", daemon=True)
    thread.start()
    serving = served(app)
    try:
        url = asyncio.run_coroutine_threadsafe(serving.__aenter__(), loop).result(START_TIMEOUT_S)
        try:
            yield url
        finally:
            asyncio.run_coroutine_threadsafe(serving.__aexit__(None, None, None), loop).result(START_TIMEOUT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
