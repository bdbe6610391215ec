"""The admin surface apart (GATEWAY_ADMIN_PORT): /admin, the ops API and the console, answers only on its own port,
and everything else only on the tenants' port; the probes answer on both.

One app serves both ports (one lifespan, one set of pools and loops): the port a request came in on is the socket's
own (the ASGI scope's `server`, which no proxy header changes), so a request for /admin that reached the tenants'
port is a 404 there, as if it did not exist, and so is a tenant route on the admin port.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.error_handlers import error_response
from app.core.errors import NotFound

ADMIN_PREFIX = "/admin"
BOTH = frozenset({"/healthz", "/readyz"})  # each port's own probes


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class AdminPort:
    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in BOTH:
            server = scope.get("server")
            on_admin_port = server is not None and server[1] == self.admin_port
            if is_admin_path(scope["path"]) != on_admin_port:
                answer = error_response(NotFound("Not Found", code="not_found", type_="invalid_request_error"))
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)
