"""Render every error the gateway produces in the upstream's envelope, 422 validation included.

A database outage is a 503 `database_unavailable` with `Retry-After`, reported to the database's outage tracker
(one WARNING when it starts, one INFO when it ends) instead of a traceback per request. Database and OS errors are
handled inside the app (the handler below is registered for their classes), so they are never re-raised to the
server's own error log; other unexpected errors keep one traceback, redacted of the values PostgreSQL echoes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.contract import ContractError
from app.core import outage
from app.core.body_limit import UPLOAD_PATH
from app.core.db.errors import DatabaseUnavailable, describe, is_database_unavailable, redacted_traceback
from app.core.errors import GatewayError, InvalidRequest
from app.core.security import redact_path

log = logging.getLogger(__name__)

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "invalid_request",
    415: "invalid_request",
}


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def validation_to_error(exc: RequestValidationError) -> InvalidRequest:
    """The first validation problem as the upstream states it: a message and the offending field."""
    errors: list[Any] = list(exc.errors())
    if not errors:
        return InvalidRequest("Invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    ctx_error = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_error, ContractError):
        return InvalidRequest(ctx_error.message, param=ctx_error.param or (loc[0] if loc else None))
    kind = first.get("type", "")
    field = ".".join(loc) if loc else None
    if kind == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.")
    if kind == "missing":
        return InvalidRequest(
            f"The '{field}' field is required." if field else "The request body is required.", param=field
        )
    if field is None and kind in ("model_attributes_type", "dict_type"):
        return InvalidRequest("The request body must be a JSON object.")
    message = str(first.get("msg", "Invalid value")).removeprefix("Value error, ")
    return InvalidRequest(f"Invalid '{field}': {message}" if field else message, param=field)


def allowed_methods(request: Request) -> str:
    """Every method the app serves on the request's path, for the `Allow` header of a 405."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):  # also the routes of included routers
        served = route.methods
        if served and route.matches(request.scope)[0] != Match.NONE:
            methods |= served
    return ", ".join(sorted(methods))


def error_answer(request: Request, exc: Exception) -> JSONResponse:
    """The answer to an error raised while serving `request`, as the handlers below give it: a GatewayError in its
    envelope (with the request's rate headers), a database outage as 503, anything else as a logged 500. For code
    that answers outside routing (app/tasks/fast_path.py)."""
    if not isinstance(exc, GatewayError):
        return _unexpected_error(request, exc)
    response = error_response(exc)
    for name, value in getattr(request.state, "rate_headers", {}).items():
        response.headers.setdefault(name, value)
    return response


# Refusals a route makes after its caller was counted in a rate window (the quota's 402, the tasks in flight's 429):
# refused requests are not counted, so the window is given back (`request.state.uncount`, set by the dependency
# that counted: app/quotas/deps.py).
UNCOUNTED = frozenset({402, 429})


async def uncount(request: Request) -> None:
    give_back = getattr(request.state, "uncount", None)
    if give_back is not None:
        request.state.uncount = None
        await give_back()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        if exc.status_code in UNCOUNTED:
            await uncount(request)
        return error_answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_to_error(exc)
        if request.url.path.endswith(UPLOAD_PATH):  # the upload endpoint answers in its own envelope
            return JSONResponse({"success": False, "message": error.message}, status_code=error.status_code)
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed"
        error = GatewayError(
            message,
            code=code,
            status_code=exc.status_code,
            type_="invalid_request_error" if exc.status_code < 500 else "api_error",
        )
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers["Allow"] = allowed_methods(request)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=headers or None)

    async def _infrastructure_error(request: Request, exc: Exception) -> JSONResponse:
        # Registered for these classes (not only via the catch-all below): handlers of specific classes run inside
        # the app, while Starlette re-raises whatever reaches the catch-all to the server, which logs it again.
        return _unexpected_error(request, exc)

    app.add_exception_handler(SQLAlchemyError, _infrastructure_error)
    app.add_exception_handler(OSError, _infrastructure_error)  # asyncpg's connect errors arrive unwrapped

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected_error(request, exc)


def _unexpected_error(request: Request, exc: BaseException) -> JSONResponse:
    path = redact_path(request.url.path)  # as the access line has it
    if is_database_unavailable(exc):
        outage.tracker(outage.DATABASE).failed(describe(exc), source=f"{request.method} {path}")
        response = error_response(DatabaseUnavailable())
        for name, value in getattr(request.state, "rate_headers", {}).items():
            response.headers.setdefault(name, value)
        return response
    log.error("unhandled error on %s %s\n%s", request.method, path, redacted_traceback(exc))
    return error_response(GatewayError("Internal error"))
