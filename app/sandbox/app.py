"""The sandbox upstream app: the Seedream 4.0 (ToAPIs) contract over HTTP, plus faults and controls."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.contract import MAX_UPLOAD_BYTES, UPLOAD_MIME_TYPES, ContractError, GenerationRequest, sniff_image_type
from app.sandbox import faults
from app.sandbox.config import STARTUP_ONLY_FIELDS, SUMMARY_FIELDS, SandboxConfig
from app.sandbox.images import EXTENSIONS, render_png
from app.sandbox.state import SandboxState, Upload
from app.sandbox.tasks import images_for, new_task

# Documented default-tier limits, reported on a 429 as the real upstream would.
_RATE_LIMITS = {"async_submit": 300, "async_query": 3000}
CONTROL_TOKEN_HEADER = "X-Sandbox-Control-Token"


class SandboxError(Exception):
    """An answer other than success: its status, JSON body and headers, rendered by one handler."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def api_error(
    status: int,
    code: str | int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> SandboxError:
    """An error in the contract's envelope `{"error": {"code", "message", "type"?, "param"?}}`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if type_ is not None:
        error["type"] = type_
    if param is not None:
        error["param"] = param
    return SandboxError(status, {"error": error}, headers)


def invalid(message: str, param: str | None = None) -> SandboxError:
    """A 400 in the contract's envelope."""
    return api_error(400, "invalid_request", message, "invalid_request_error", param)


def upload_error(status: int, message: str) -> SandboxError:
    """An upload error, which has its own envelope."""
    return SandboxError(status, {"success": False, "message": message})


def get_state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


StateDep = Annotated[SandboxState, Depends(get_state)]


def caller_key(request: Request, state: StateDep) -> str:
    """The caller's bearer key; no User-Agent is refused first, as the upstream's edge does before auth."""
    if not request.headers.get("user-agent", "").strip():
        state.stats.count("forbidden")
        raise api_error(403, "forbidden", "Requests without a User-Agent header are refused", "permission_error")
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not state.config.accepts_key(key):
        state.stats.count("unauthorized")
        raise api_error(401, "unauthorized", "Invalid API key", "authentication_error")
    return key


KeyDep = Annotated[str, Depends(caller_key)]


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine's (an IPv4-mapped IPv6 address counts as its IPv4 one)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:  # no address at all (e.g. a Unix socket) or a name: not provably local
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def presented_control_token(request: Request) -> str:
    explicit = request.headers.get(CONTROL_TOKEN_HEADER)
    if explicit is not None:
        return explicit.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def control_access(request: Request, state: StateDep) -> None:
    """`/_control/*` changes what every caller sees: free from loopback (tests, ops on the box), else only with
    SANDBOX_CONTROL_TOKEN. A published port or a zero-config gateway on 0.0.0.0 must not hand it to anyone."""
    if is_loopback(request.client.host if request.client else None):
        return
    expected = state.config.control_token.get_secret_value()
    given = presented_control_token(request)
    # compare_digest on bytes: constant time, and no TypeError on non-ASCII header values.
    if expected and hmac.compare_digest(given.encode(), expected.encode()):
        return
    raise api_error(
        403,
        "forbidden",
        f"Sandbox control needs the control token (Bearer or {CONTROL_TOKEN_HEADER}) from a non-loopback client",
        "permission_error",
    )


def absolute_url(request: Request, name: str, **params: Any) -> str:
    """An absolute URL of one of this app's routes that stays right when the app is mounted under a prefix."""
    # request.url_for resolves against the outermost router, which fails under a named mount.
    path = request.app.url_path_for(name, **params)
    public = request.app.state.sandbox.config.public_base_url.rstrip("/")
    if public:  # behind compose or a proxy, the name the caller used is not one a browser can reach
        return f"{public}{path}"
    root = request.scope.get("root_path", "")
    return f"{request.url.scheme}://{request.url.netloc}{root}{path}"


def header_faults(request: Request) -> set[str]:
    try:
        return faults.from_header(request.headers.get(faults.FAULT_HEADER))
    except faults.UnknownFaultError as e:
        raise invalid(str(e), faults.FAULT_HEADER) from e


async def apply_call_faults(state: SandboxState, chosen: set[str], category: str) -> None:
    """Faults that shape the HTTP answer itself: a hang, then a 429 or a 500."""
    for name in sorted(chosen & faults.QUERY_FAULTS):
        state.stats.faults[name] += 1
    if "timeout" in chosen:
        await asyncio.sleep(state.config.timeout_seconds)
    if "429" in chosen:
        retry = state.config.retry_after_seconds
        headers = {
            "Retry-After": str(retry),
            "X-RateLimit-Limit": str(_RATE_LIMITS[category]),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(state.clock()) + retry),
            "X-RateLimit-Category": category,
        }
        raise api_error(429, "rate_limit_exceeded", "Async task request rate exceeded", headers=headers)
    if "500" in chosen:
        raise api_error(500, "internal_error", "Internal server error (sandbox fault)", "server_error")


def validation_error(exc: ValidationError) -> SandboxError:
    """The first validation problem as a 400, naming the field (or the ContractError's own param)."""
    err = exc.errors()[0]
    cause = err.get("ctx", {}).get("error")
    field = ".".join(str(part) for part in err["loc"] if not isinstance(part, int)) or None
    if isinstance(cause, ContractError):
        param, message = cause.param or field, cause.message
    elif err["type"] == "missing":
        param, message = field, f"The '{field}' field is required."
    else:
        param, message = field, f"Invalid '{field}': {err['msg']}"
    return invalid(message, param)


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise invalid("Request body is not valid JSON.") from e
    if not isinstance(data, dict):
        raise invalid("Request body must be a JSON object.")
    return data


def parse_generation(raw: bytes) -> GenerationRequest:
    """A create body validated by the shared contract model."""
    try:
        return GenerationRequest.model_validate(json_object(raw))
    except ValidationError as e:
        raise validation_error(e) from e


router = APIRouter()


@router.get("/")
async def health(state: StateDep) -> dict[str, Any]:
    """Liveness, for humans and start-up probes."""
    return {
        "service": "seedream-sandbox",
        "status": "ok",
        "tasks": len(state.tasks),
        "time": int(state.clock()),
    }


@router.post("/v1/images/generations")
async def create_generation(request: Request, state: StateDep, key: KeyDep) -> dict[str, Any]:
    """Create a task; faults come from the request if it names any, else from the configured rates."""
    state.stats.count("create", key)
    requested = header_faults(request)
    try:
        body = parse_generation(await request.body())
    except SandboxError:
        state.stats.count("invalid")
        raise
    requested |= faults.from_prompt(body.prompt)
    chosen = requested or faults.draw(state.config, state.rng)
    await apply_call_faults(state, chosen, "async_submit")
    for name in sorted(chosen - faults.QUERY_FAULTS):
        state.stats.faults[name] += 1
    if "content_policy" in chosen:
        raise api_error(
            422,
            "content_policy_violation",
            "The request was rejected by the content policy (sandbox fault).",
            "invalid_request_error",
        )
    task = new_task(
        owner=key,
        model=body.model,
        size=body.size,
        n=images_for(body),
        client_business_id=body.client_business_id,
        faults=chosen,
        config=state.config,
        result_style=state.next_result_style(),
        now=state.task_now(),
    )
    state.forget_expired()
    state.tasks[task.id] = task
    if state.config.create_latency_seconds > 0:  # the task exists upstream while its create call is still open
        await asyncio.sleep(state.config.create_latency_seconds)
    return task.create_payload()


@router.get("/v1/images/generations/{task_id}")
async def get_generation(task_id: str, request: Request, state: StateDep, key: KeyDep) -> dict[str, Any]:
    """Status of a task owned by the caller's key; others' tasks are indistinguishable from unknown ones."""
    state.stats.count("status", key)
    await apply_call_faults(state, header_faults(request) & faults.QUERY_FAULTS, "async_query")
    task = state.tasks.get(task_id)
    if task is None or task.owner != key:
        # The documented 404 carries a numeric code.
        raise api_error(404, 404, "Task not found", "not_found_error")
    state.stats.status_by_task[task_id] += 1

    def image_url(index: int) -> str:
        token = state.capability("file", task.id, str(index))
        return absolute_url(request, "sandbox_file", token=token, task_id=task.id, index=index)

    return task.payload(state.task_now(), image_url, held=state.held)


def file_not_found() -> SandboxError:
    return api_error(404, "not_found", "File not found", "not_found_error")


@router.get("/files/{token}/{task_id}/{index:int}.png", name="sandbox_file")
async def get_file(token: str, task_id: str, index: int, state: StateDep) -> Response:
    """A generated image at a capability URL, like the upstream's CDN: whoever has the URL (from the task's
    result) may open it, nobody can guess or list one, and it is gone once the result expires. A wrong token is
    the same 404 as a missing file."""
    state.stats.count("file")
    task = state.tasks.get(task_id)
    if not state.capability_ok(token, "file", task_id, str(index)) or task is None:
        raise file_not_found()
    if not task.image_available(index, state.task_now(), held=state.held):
        raise file_not_found()
    png = render_png(task.size, state.config.image_long_side, int(task.id[-6:], 16) + index)
    return Response(content=png, media_type="image/png")


@router.post("/v1/uploads/images")
async def upload_image(request: Request, state: StateDep, key: KeyDep) -> dict[str, Any]:
    """Store a reference image and answer its public URL, in the upload envelope."""
    state.stats.count("upload", key)
    try:
        form = await request.form(max_files=1, max_fields=10)
    except StarletteHTTPException as e:
        raise upload_error(400, f"Invalid multipart body: {e.detail}") from e
    file = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(file, UploadFile):
        raise upload_error(400, "No file uploaded; send the image as multipart field 'file'")
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    await form.close()
    if len(data) > MAX_UPLOAD_BYTES:
        raise upload_error(413, "Image too large. Maximum size is 10MB")
    mime_type = sniff_image_type(data)
    if mime_type not in UPLOAD_MIME_TYPES:
        raise upload_error(400, "Unsupported image type. Allowed: JPEG, PNG, WebP, GIF")
    upload_id = f"upload_{uuid.uuid4().hex[:16]}"
    upload = Upload(
        id=upload_id,
        file_name=f"{upload_id}.{EXTENSIONS[mime_type]}",
        owner=key,
        mime_type=mime_type,
        data=data,
        purpose=purpose if isinstance(purpose, str) and purpose else "generation",
    )
    state.uploads[upload.file_name] = upload
    token = state.capability("upload", upload.file_name)
    url = absolute_url(request, "sandbox_upload", token=token, file_name=upload.file_name)
    return {
        "success": True,
        "message": "",
        "data": {"id": upload.id, "url": url, "mime_type": mime_type, "size": len(data)},
    }


@router.get("/uploads/{token}/{file_name}", name="sandbox_upload")
async def get_upload(token: str, file_name: str, state: StateDep) -> Response:
    """An uploaded image at a capability URL: the uploader gets the URL and may hand it on (the upstream and the
    gateway fetch it), nobody else can guess it."""
    upload = state.uploads.get(file_name)
    if not state.capability_ok(token, "upload", file_name) or upload is None:
        raise file_not_found()
    return Response(content=upload.data, media_type=upload.mime_type)


control = APIRouter(prefix="/_control", dependencies=[Depends(control_access)])


@control.get("/stats")
async def control_stats(state: StateDep) -> dict[str, Any]:
    """Call counters since start or the last reset; `by_key` is keyed by key fingerprint, never by key."""
    return {**state.stats.as_dict(), "tasks": len(state.tasks), "uploads": len(state.uploads)}


@control.get("/config")
async def control_get_config(state: StateDep) -> dict[str, Any]:
    """The live config, secrets replaced by a summary (see `SandboxConfig.public_view`)."""
    return state.config.public_view()


@control.patch("/config")
async def control_patch_config(request: Request, state: StateDep) -> dict[str, Any]:
    """Change some config fields at runtime; tasks already created keep their timings and outcome.

    `accepted_keys` may be set but is never shown; the summary fields of a GET answer are ignored, so that answer
    can be PATCHed back to restore a config (the keys then stay as they are)."""
    patch = {name: value for name, value in json_object(await request.body()).items() if name not in SUMMARY_FIELDS}
    unknown = sorted(set(patch) - set(SandboxConfig.model_fields))
    if unknown:
        raise invalid(f"Unknown config field(s): {', '.join(unknown)}")
    fixed = sorted(set(patch) & STARTUP_ONLY_FIELDS)
    if fixed:
        raise invalid(f"Set at start-up only (SANDBOX_{fixed[0].upper()}): {', '.join(fixed)}", fixed[0])
    try:
        state.config = SandboxConfig.model_validate({**state.config.model_dump(), **patch})
    except ValidationError as e:
        raise validation_error(e) from e
    if "seed" in patch:
        state.rng.seed(state.config.seed)
    return state.config.public_view()


def set_hold(state: SandboxState, hold: bool) -> dict[str, Any]:
    # Through the config setter, so the hold starts or ends at this very instant.
    state.config = state.config.model_copy(update={"hold": hold})
    return {"hold": state.held, "task_time": state.task_now()}


@control.post("/hold")
async def control_hold(state: StateDep) -> dict[str, Any]:
    """Freeze every task where it stands (new ones stay queued) until `/_control/release`; idempotent."""
    return set_hold(state, True)


@control.post("/release")
async def control_release(state: StateDep) -> dict[str, Any]:
    """End a hold: tasks go on from where they stood, as if the held period had not passed; idempotent."""
    return set_hold(state, False)


@control.post("/reset")
async def control_reset(state: StateDep) -> dict[str, Any]:
    """Forget all tasks, uploads and counters (the config, including a hold, stays)."""
    state.reset()
    return {"reset": True}


async def _render_sandbox_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandboxError)
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _render_http_error(request: Request, exc: Exception) -> Response:
    # Unknown routes and wrong methods answer in the contract's envelope too.
    assert isinstance(exc, StarletteHTTPException)
    code = "not_found" if exc.status_code == 404 else "invalid_request"
    headers = dict(exc.headers) if exc.headers else None
    error = api_error(exc.status_code, code, str(exc.detail), "invalid_request_error", headers=headers)
    return await _render_sandbox_error(request, error)


def create_sandbox_app(config: SandboxConfig | None = None, clock: Callable[[], float] | None = None) -> FastAPI:
    """A sandbox upstream app; `clock` (unix seconds) drives task progress so tests need not sleep; a hold
    (`/_control/hold`) freezes it for tasks, so tests over real sockets need not race it either."""
    app = FastAPI(title="Seedream sandbox upstream", version="1.0")
    app.state.sandbox = SandboxState(config=config or SandboxConfig(), clock=clock or time.time)
    app.include_router(router)
    app.include_router(control)
    app.add_exception_handler(SandboxError, _render_sandbox_error)
    app.add_exception_handler(StarletteHTTPException, _render_http_error)
    return app
