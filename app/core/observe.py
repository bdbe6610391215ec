"""The outermost ASGI middleware: a request id for every request, one access line and the HTTP metrics for every
answer, the fast path's included (it answers before routing, inside this middleware).

- The request id is the caller's `X-Request-ID` when usable (1-128 printable ASCII characters), a new one otherwise;
  it goes back on every answer (errors, the fast path, event streams) and into a contextvar that log records
  (app/core/logs.py) and upstream calls (app/upstream/toapis.py) read.
- The route label is the matched route's template, never the raw path: routing writes the route into the scope,
  which this middleware reads once the answer is sent. A warm status call answered before routing is
  `/v1/images/generations/{task_id}`; a path no route matches is "unmatched".
- A client that goes away before any answer (mid-body, say) is counted and logged as 499, as nginx does: no 5xx
  for the alert, since nobody was answered and nothing failed.
- A capability URL (a route with a `{token}`: the sandbox's files and uploads, run stand-alone or mounted) is
  logged as its route template.
- Path segments that look like secret keys (an operator's `DELETE /admin/v1/upstream-keys/sk-...`) are logged
  redacted, by the rule the audit log keeps (`app.core.security.redact_key`).
"""

from __future__ import annotations

import logging
import time

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import context, metrics
from app.core.logs import ACCESS_LOGGER, AccessLine, direct_access
from app.core.security import redact_path

access_log = logging.getLogger(ACCESS_LOGGER)

_REQUEST_ID = b"x-request-id"
_STATUS_PREFIX = "/v1/images/generations/"
_STATUS_ROUTE = "/v1/images/generations/{task_id}"
_TOKEN = "token"  # the path parameter of a capability URL (the sandbox's files and uploads)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        return metrics.UNMATCHED_ROUTE
    path = scope["path"]
    # Not routed, yet answered: the status fast path (app/tasks/fast_path.py), for a task id-shaped tail only.
    if path.startswith(_STATUS_PREFIX) and "/" not in path[len(_STATUS_PREFIX) :] and len(path) > len(_STATUS_PREFIX):
        return _STATUS_ROUTE
    return metrics.UNMATCHED_ROUTE


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID:
                raw = value
                break
        request_id = context.accepted_request_id(raw)
        current = context.begin(request_id)
        path: str = scope["path"]
        if path.startswith(_STATUS_PREFIX):
            tail = path[len(_STATUS_PREFIX) :].split("/", 1)[0]
            if tail:
                current.task_id = tail
        header = (_REQUEST_ID, request_id.encode("ascii"))
        status = 500
        started_answer = disconnected = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_answer
            if message["type"] == "http.response.start":
                status = message["status"]
                started_answer = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        async def receive_watched() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        try:
            await self.app(scope, receive_watched, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if disconnected and not started_answer:
                status = metrics.CLIENT_CLOSED_REQUEST
            route = route_template(scope)
            if isinstance(scope.get("route"), Mount) or _TOKEN in scope.get("path_params", ()):
                path = route  # a capability URL's token, or a mounted app's (the zero-config sandbox): not logged
            else:
                path = redact_path(path)
            method: str = scope["method"]
            metrics.observe_http(route, method, status, elapsed)
            line = AccessLine(
                time.time(),
                method,
                path,
                route,
                status,
                round(elapsed * 1000, 2),
                request_id,
                current.tenant_id,
                current.task_id,
            )
            direct = direct_access()
            if direct is not None:
                direct.write_access(line)
            elif access_log.isEnabledFor(logging.INFO):
                _log_access(line)


def _log_access(line: AccessLine) -> None:
    """The access line through logging (a capture or another handler is installed)."""
    access_log.handle(access_record(line))


def access_record(line: AccessLine) -> logging.LogRecord:
    """The access line's record, built directly (`Logger.info` would walk the stack for the caller). The path is in
    the message only."""
    record = logging.LogRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %s %.2fms",
        (line.method, line.path, line.status, line.duration_ms),
        None,
    )
    record.created = line.created
    record.msecs = (line.created - int(line.created)) * 1000
    record.request_id = line.request_id
    record.tenant_id = line.tenant_id
    record.task_id = line.task_id
    record.method = line.method
    record.route = line.route
    record.status = line.status
    record.duration_ms = line.duration_ms
    return record
