"""The two calls of the hot path answered before routing: a warm status call, and a submit by a known key.

## Status

Both paths ask the one access decision (app/access/policy.py): `decide_from_memory` is `decide` made from memory
alone, and answers None whenever `decide` must run (a cold or unknown key, a refusal, a rate window to count); the
request then goes on to the app unchanged, whose route dependency decides, refuses and counts. So the middleware
keeps data (the keys and the answers it may reuse), never a rule.

A status call (`GET /v1/images/generations/{task_id}`) that memory admits, for a task whose answer memory holds
(app/tasks/cache.py), needs nothing FastAPI does: no routing, no dependency to solve, no validation. This ASGI
middleware answers exactly that case with the stored bytes, the same body and headers the route sends.

## Submit
A submit (`POST /v1/images/generations`) that memory admits, with a JSON Content-Type, no query string, at most one
`Idempotency-Key` that the route's own check (`idempotency_key`) takes, and a body that parses and validates as a
GenerationRequest, needs nothing from FastAPI but what this middleware does:
it calls the same `TaskService.submit` with the same arguments, answers the same bytes, and renders an error
exactly as the app's exception handlers do (`error_answer`). Routing, dependency solving and FastAPI's request
and response machinery cost a submit more CPU than its own ledger statement. Anything else goes on to the app,
with the body it read replayed, where every rule and error applies as before (an invalid body gets the app's own
400). It sits inside BodySizeLimit, which has read the body whole, up to the limit, already; and it puts the route
in the scope, as routing does, so access lines, metrics and traces name it alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access import policy
from app.access.policy import QUERYING, SUBMITTING
from app.contract import GenerationRequest
from app.core.body_limit import replay
from app.core.error_handlers import error_answer
from app.core.errors import InvalidRequest
from app.core.ids import is_task_id
from app.tasks.router import idempotency_key as idempotency_key_of
from app.tasks.router import is_json
from app.tasks.service import render

if TYPE_CHECKING:
    from starlette.datastructures import State

    from app.tasks.service import TaskService
    from app.tenants.service import AuthenticatedKey, TenantService

PREFIX = "/v1/images/generations/"
SUBMIT_PATH = "/v1/images/generations"
_JSON = (b"content-type", b"application/json")


class StatusFastPath:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state  # the app's state: its services exist once the lifespan has run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            body = self._answer(scope)
            if body is not None:
                await send({"type": "http.response.start", "status": 200, "headers": _headers(body)})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> bytes | None:
        task_id = scope["path"][len(PREFIX) :]
        tenants: TenantService | None = getattr(self.state, "tenants", None)
        tasks: TaskService | None = getattr(self.state, "tasks", None)
        if tenants is None or tasks is None or not is_task_id(task_id) or scope.get("query_string"):
            return None
        authorization = origin = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"origin" and origin is None:
                origin = value
        if authorization is None:
            return None
        who = policy.decide_from_memory(tenants, authorization.decode("latin-1"), QUERYING, _text(origin))
        return None if who is None else tasks.cached_answer(who.tenant.id, task_id, who.end_user_id)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(len(body)).encode()), _JSON]


class SubmitFastPath:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state
        self._route: APIRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != SUBMIT_PATH:
            await self.app(scope, receive, send)
            return
        caller = self._caller(scope)
        if caller is None:
            await self.app(scope, receive, send)
            return
        message = await receive()  # BodySizeLimit's replay: the whole body, in one message
        request = _parse(message)
        route = self._route or self._find_route(scope)
        if request is None or route is None:
            await self.app(scope, replay(message, receive), send)
            return
        who, idempotency_key = caller
        tasks: TaskService = self.state.tasks
        scope["route"] = route  # as routing would: the route's name in access lines, metrics and traces
        try:
            task = await tasks.submit(who.tenant, request, idempotency_key=idempotency_key, end_user=who.end_user)
        except Exception as exc:  # answered as the app's exception handlers answer it
            answer: Response = error_answer(Request(scope, receive), exc)
        else:
            answer = Response(render(task, created=True), media_type="application/json")
        await answer(scope, receive, send)

    def _caller(self, scope: Scope) -> tuple[AuthenticatedKey, str | None] | None:
        """The known key (or token) of an eligible submit, and its Idempotency-Key; None when the app must decide."""
        tenants: TenantService | None = getattr(self.state, "tenants", None)
        if tenants is None or getattr(self.state, "tasks", None) is None or scope.get("query_string"):
            return None
        authorization = content_type = origin = None
        keys: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"origin" and origin is None:
                origin = value
            elif name == b"idempotency-key":
                keys.append(value)
        if authorization is None or not is_json(content_type.decode("latin-1") if content_type else None):
            return None
        if len(keys) > 1:
            return None
        try:
            idempotency_key = idempotency_key_of(keys[0].decode("latin-1") if keys else None)
        except InvalidRequest:
            return None  # the app answers it
        who = policy.decide_from_memory(tenants, authorization.decode("latin-1"), SUBMITTING, _text(origin))
        return None if who is None else (who, idempotency_key)

    def _find_route(self, scope: Scope) -> APIRoute | None:
        """The app's own submit route, as routing puts it in the scope (found once)."""
        app: Any = scope.get("app")
        for context in iter_route_contexts(getattr(getattr(app, "router", None), "routes", [])):
            route = context.original_route
            if isinstance(route, APIRoute) and context.path == SUBMIT_PATH and "POST" in (context.methods or ()):
                self._route = route
                break
        return self._route


def _parse(message: Message) -> GenerationRequest | None:
    """The body as FastAPI reads it (JSON, then the model validated in Python mode); None when it is not a whole,
    valid request: the app then answers it."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    try:
        return GenerationRequest.model_validate(orjson.loads(message.get("body", b"")))
    except (ValueError, ValidationError):  # orjson's JSONDecodeError is a ValueError
        return None
