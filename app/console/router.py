"""The ops console (/admin/ui): server-rendered pages over the same services as the admin API.

Every action calls the service method the matching /admin/v1 route calls, with the actor "console", so it is
audited and invalidated as the API's are; a refusal shows the service's own message. Pages are Jinja2 templates with
one stylesheet shipped in the package (no script, no CDN), charts are inline SVG (app/console/charts.py). A form
posts, the action runs, and the browser is sent back to the page with the outcome (post/redirect/get), except when
the answer holds a new key: that page is the answer itself, shown this once and never stored.

Sign-in, sessions, CSRF and the throttle on wrong tokens are app/console/sessions.py's; `ConsoleRoute` applies them
to every route of this router (and the security headers to every answer), so no page can forget them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app.audit.service import ACTOR_CONSOLE, AuditService
from app.console import charts
from app.console.sessions import COOKIE, IDLE_S, PATH, PRE_COOKIE, Session, SessionCodec, Throttle
from app.core.errors import GatewayError, InvalidRequest
from app.core.limits import LIMIT_NAMES, LimitsUpdate, describe, parse_limit_word
from app.core.runtime import Kernel
from app.models.tenant import TenantStatus
from app.quotas.service import QuotaService
from app.results.schemas import StorageOut
from app.results.service import ResultService
from app.tasks.ledger import TaskLedger
from app.tenants.schemas import DEFAULT_GRACE_S, SCOPES, NewKeyOut
from app.tenants.service import TenantService
from app.upstream.schemas import UpstreamKeyCreate, UpstreamKeyUpdate
from app.upstream.service import UpstreamKeyService
from app.webhooks.service import WebhookService

HERE = Path(__file__).parent
STATIC = {"console.css": "text/css; charset=utf-8"}
FLASH_COOKIE = "gw_console_flash"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
templates = Jinja2Templates(directory=HERE / "templates")


class SignInFirst(Exception):
    """No valid session: the answer is the sign-in page."""


class ConsoleRoute(APIRoute):
    """Every console route: a session (except sign-in and the stylesheet), a CSRF token on every POST, the session
    renewed on every answer, and the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        open_path = self.path in (f"{PATH}/sign-in", f"{PATH}/static/{{name}}")

        async def route(request: Request) -> Response:
            console = Console.of(request)
            session = console.codec.decode(request.cookies.get(COOKIE))
            request.state.console_session = session
            if request.method == "POST":
                form = await request.form()
                token = form.get("csrf")
                given = token if isinstance(token, str) else None
                if open_path:
                    pre = request.cookies.get(PRE_COOKIE) or ""
                    valid = bool(pre) and console.codec.matches(given, console.codec.sign_in_csrf(pre))
                else:
                    valid = session is not None and console.codec.matches(given, console.codec.csrf(session))
                if not valid:
                    response: Response = HTMLResponse(
                        templates.get_template("refused.html").render(
                            message="This form has expired or did not come from the console: reload the page "
                            "and try again.",
                            path=PATH,
                        ),
                        status_code=403,
                    )
                    return _secured(response, request, session)
            if session is None and not open_path:
                return _secured(RedirectResponse(f"{PATH}/sign-in", status_code=303), request, None)
            try:
                response = await handler(request)
            except SignInFirst:
                response = RedirectResponse(f"{PATH}/sign-in", status_code=303)
            return _secured(response, request, request.state.console_session)

        return route


def _secured(response: Response, request: Request, session: Session | None) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if session is not None:
        console = Console.of(request)
        response.set_cookie(
            COOKIE,
            console.codec.encode(session),
            max_age=IDLE_S,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


router = APIRouter(prefix=PATH, include_in_schema=False, route_class=ConsoleRoute)


@dataclass
class Console:
    """What the pages share: the session codec and the throttle of this app, and the services of its lifespan."""

    codec: SessionCodec
    throttle: Throttle
    kernel: Kernel

    @classmethod
    def of(cls, request: Request) -> Console:
        state = request.app.state
        console: Console | None = getattr(state, "console", None)
        if console is None:
            kernel: Kernel = state.kernel
            secrets_ = kernel.settings.secrets
            console = cls(
                SessionCodec(secrets_.secret_key, secrets_.admin_token, kernel.clock), Throttle(kernel.clock), kernel
            )
            state.console = console
        return console

    @staticmethod
    def tenants(request: Request) -> TenantService:
        service: TenantService = request.app.state.tenants
        return service

    @staticmethod
    def quotas(request: Request) -> QuotaService:
        service: QuotaService = request.app.state.quotas
        return service

    @staticmethod
    def upstream_keys(request: Request) -> UpstreamKeyService:
        service: UpstreamKeyService = request.app.state.upstream.keys
        return service

    @staticmethod
    def results(request: Request) -> ResultService:
        service: ResultService = request.app.state.results
        return service

    @staticmethod
    def webhooks(request: Request) -> WebhookService:
        service: WebhookService = request.app.state.webhooks
        return service

    def ledger(self) -> TaskLedger:
        return TaskLedger(self.kernel.sessions)

    def audit(self) -> AuditService:
        return AuditService(self.kernel.sessions, self.kernel.clock)


# --- rendering --------------------------------------------------------------------------------------------------------
def when(unix: int | None) -> str:
    if unix is None:
        return "-"
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = when
templates.env.globals["PATH"] = PATH


def _tenant_url(name: str) -> str:
    return f"{PATH}/tenants/{quote(name, safe='')}"


templates.env.filters["tenant_url"] = _tenant_url
templates.env.filters["seg"] = lambda value: quote(str(value), safe="")


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    session: Session | None = request.state.console_session
    console = Console.of(request)
    flash = _read_flash(request, console)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf": console.codec.csrf(session) if session is not None else "",
            "signed_in": session is not None,
            "flash": flash,
            "nav": name.removesuffix(".html"),
            **context,
        },
        status_code=status_code,
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=PATH)
    return response


def back(request: Request, to: str, *, ok: str | None = None, error: str | None = None) -> RedirectResponse:
    """Post/redirect/get: back to `to`, with the outcome shown once there."""
    response = RedirectResponse(to, status_code=303)
    flash = {"kind": "error" if error else "ok", "text": error or ok or ""}
    body = base64.urlsafe_b64encode(json.dumps(flash).encode()).decode()
    codec = Console.of(request).codec
    response.set_cookie(
        FLASH_COOKIE,
        f"{body}.{codec.csrf(Session('flash:' + body, 0, 0))}",
        max_age=60,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _read_flash(request: Request, console: Console) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or "." not in raw:
        return None
    body, mac = raw.rsplit(".", 1)
    if not console.codec.matches(mac, console.codec.csrf(Session("flash:" + body, 0, 0))):
        return None
    try:
        flash: dict[str, str] = json.loads(base64.urlsafe_b64decode(body.encode()))
    except ValueError:
        return None
    return flash


def _form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _refusal(e: GatewayError | ValidationError) -> str:
    if isinstance(e, GatewayError):
        return e.message
    error = e.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}" if where else str(error["msg"])


# --- sign-in ----------------------------------------------------------------------------------------------------------
@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    if request.state.console_session is not None:
        return RedirectResponse(f"{PATH}/", status_code=303)
    return _sign_in_form(request)


def _sign_in_form(request: Request, *, error: str | None = None, status_code: int = 200) -> Response:
    pre = secrets.token_urlsafe(18)
    codec = Console.of(request).codec
    response = templates.TemplateResponse(
        request,
        "sign_in.html",
        {"csrf": codec.sign_in_csrf(pre), "error": error, "signed_in": False, "flash": None, "nav": "sign_in"},
        status_code=status_code,
    )
    response.set_cookie(
        PRE_COOKIE, pre, max_age=3600, path=PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    console = Console.of(request)
    client = request.client.host if request.client else "unknown"
    wait = console.throttle.retry_after(client)
    if wait is not None:
        response = _sign_in_form(request, error=f"Too many wrong tokens: try again in {wait} s.", status_code=429)
        response.headers["Retry-After"] = str(wait)
        return response
    token = _form_text(await request.form(), "token")
    if not console.codec.token_is_right(token):
        console.throttle.failed(client)
        return _sign_in_form(request, error="That is not the admin token.", status_code=401)
    console.throttle.succeeded(client)
    session = console.codec.new()
    request.state.console_session = session
    response = RedirectResponse(f"{PATH}/", status_code=303)
    response.delete_cookie(PRE_COOKIE, path=PATH)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    request.state.console_session = None
    response = RedirectResponse(f"{PATH}/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path=PATH)
    return response


# --- overview ---------------------------------------------------------------------------------------------------------
@router.get("/")
async def overview(request: Request) -> Response:
    console = Console.of(request)
    now = console.kernel.clock()
    activity = await console.ledger().activity(now, hours=24)
    labels = [dt.datetime.fromtimestamp(h, dt.UTC).strftime("%H:00") for h in activity.hours]
    keys = (await Console.upstream_keys(request).list(limit=200)).data
    states: dict[str, int] = {}
    for key in keys:
        states[str(key.status)] = states.get(str(key.status), 0) + 1
    names = {key.id: key.name for key in keys}
    return render(
        request,
        "overview.html",
        activity=activity,
        requests_chart=charts.columns(
            "Tasks made per hour", labels, activity.created, overlay=activity.failed, overlay_name="failed", every=3
        ),
        status_chart=charts.bars("Tasks by status", activity.by_status, alert=frozenset({"failed"})),
        failures_chart=charts.bars("Failures by code", activity.failures, alert=frozenset(activity.failures)),
        key_states_chart=charts.bars(
            "Upstream keys by state", states, alert=frozenset({"cooling", "disabled", "retired"})
        ),
        per_key_chart=charts.bars(
            "Tasks per upstream key", {names.get(k, k): n for k, n in activity.by_upstream_key.items()}
        ),
        total=sum(activity.created),
        failed=sum(activity.failed),
    )


# --- tenants ----------------------------------------------------------------------------------------------------------
@router.get("/tenants")
async def tenants_page(request: Request, q: str = "", cursor: str | None = None) -> Response:
    try:
        page = await Console.tenants(request).list_tenants(limit=50, cursor=cursor, name_contains=q or None)
    except GatewayError as e:
        return render(request, "refused.html", status_code=e.status_code, message=e.message)
    next_url = f"{PATH}/tenants?" + urlencode({"q": q, "cursor": page.next_cursor}) if page.next_cursor else None
    return render(request, "tenants.html", page=page, q=q, next_url=next_url)


@router.post("/tenants")
async def create_tenant(request: Request) -> Response:
    name = _form_text(await request.form(), "name")
    try:
        created = await Console.tenants(request).create_tenant(name, actor=ACTOR_CONSOLE)
    except GatewayError as e:
        return back(request, f"{PATH}/tenants", error=e.message)
    return await _tenant_page(request, created.name, new_key=created.key, new_key_note="its first key")


@router.get("/tenants/{name}")
async def tenant_page(request: Request, name: str) -> Response:
    return await _tenant_page(request, name)


async def _tenant_page(
    request: Request, name: str, *, new_key: NewKeyOut | None = None, new_key_note: str = ""
) -> Response:
    console = Console.of(request)
    try:
        tenant = await Console.tenants(request).describe(name)
        keys = await Console.tenants(request).list_keys(tenant.id, limit=200)
        usage = await Console.quotas(request).daily_usage(tenant.id, days=14)
        failed = await console.ledger().list(tenant_id=tenant.id, status="failed", limit=10)
        try:
            webhook = await Console.webhooks(request).describe(tenant.id)
        except GatewayError:
            webhook = None
        deliveries = await Console.webhooks(request).list_deliveries(tenant=tenant.id, limit=10)
        storage = StorageOut.of(await Console.results(request).usage(tenant.id))
    except GatewayError as e:
        return render(request, "refused.html", status_code=e.status_code, message=e.message)
    usage_chart = charts.columns("Images per day", [day[5:] for day, _ in usage], [n for _, n in usage], every=2)
    limits = tenant.limits.model_dump()
    return render(
        request,
        "tenant.html",
        tenant=tenant,
        keys=keys.data,
        usage_chart=usage_chart,
        failed=failed.data,
        webhook=webhook,
        deliveries=deliveries.data,
        storage=storage,
        limits=[(n, limits[n], describe(n)) for n in LIMIT_NAMES],
        scopes=SCOPES,
        default_grace=DEFAULT_GRACE_S,
        new_key=new_key,
        new_key_note=new_key_note,
    )


@router.post("/tenants/{name}/status")
async def set_status(request: Request, name: str) -> Response:
    wanted = _form_text(await request.form(), "status")
    status = TenantStatus.DISABLED if wanted == "disabled" else TenantStatus.ACTIVE
    try:
        tenant = await Console.tenants(request).update_tenant(name, status=status, actor=ACTOR_CONSOLE)
    except GatewayError as e:
        return back(request, _tenant_url(name), error=e.message)
    return back(request, _tenant_url(tenant.name), ok=f"Tenant {tenant.name} is {tenant.status}.")


@router.post("/tenants/{name}/images/delete")
async def delete_images(request: Request, name: str) -> Response:
    """Delete every kept image of the tenant: the admin API's `DELETE .../images`, audited as the console."""
    try:
        _, count = await Console.results(request).delete_tenant_images(name, actor=ACTOR_CONSOLE)
    except GatewayError as e:
        return back(request, _tenant_url(name), error=e.message)
    return back(request, _tenant_url(name), ok=f"{count} kept images deleted; the store is emptied shortly.")


@router.post("/tenants/{name}/limits")
async def set_limits(request: Request, name: str) -> Response:
    form = await request.form()
    given = {n: _form_text(form, n) for n in LIMIT_NAMES}
    try:
        update = LimitsUpdate.model_validate({n: parse_limit_word(v or "unlimited") for n, v in given.items()})
        await Console.tenants(request).set_limits(name, update, actor=ACTOR_CONSOLE)
    except (GatewayError, ValidationError) as e:
        return back(request, _tenant_url(name), error=_refusal(e))
    except ValueError:
        return back(request, _tenant_url(name), error="Each limit is a whole number, or empty for unlimited.")
    return back(request, _tenant_url(name), ok="Limits saved.")


@router.post("/tenants/{name}/keys")
async def create_key(request: Request, name: str) -> Response:
    form = await request.form()
    chosen = [s for s in SCOPES if form.get(f"scope_{s}") == "on"]
    try:
        key = await Console.tenants(request).create_key(
            name, name=_form_text(form, "key_name"), scopes=chosen, actor=ACTOR_CONSOLE
        )
    except GatewayError as e:
        return back(request, _tenant_url(name), error=e.message)
    return await _tenant_page(request, name, new_key=key, new_key_note="a new key")


@router.post("/keys/{key_id}/rotate")
async def rotate_key(request: Request, key_id: str) -> Response:
    form = await request.form()
    tenant = _form_text(form, "tenant")
    try:
        grace = int(_form_text(form, "grace_minutes") or "0") * 60
        key = await Console.tenants(request).rotate_key(key_id, grace, actor=ACTOR_CONSOLE)
    except GatewayError as e:
        return back(request, _tenant_url(tenant), error=e.message)
    except ValueError:
        return back(request, _tenant_url(tenant), error="The grace period is a whole number of minutes.")
    return await _tenant_page(request, key.tenant_id, new_key=key, new_key_note=f"the rotation of {key_id}")


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    tenant = _form_text(await request.form(), "tenant")
    try:
        await Console.tenants(request).revoke_key(key_id, actor=ACTOR_CONSOLE)
    except GatewayError as e:
        return back(request, _tenant_url(tenant), error=e.message)
    return back(request, _tenant_url(tenant), ok=f"Key {key_id} revoked: it is refused from now on.")


@router.post("/deliveries/{delivery_id}/replay")
async def replay(request: Request, delivery_id: str) -> Response:
    tenant = _form_text(await request.form(), "tenant")
    try:
        await Console.webhooks(request).replay(delivery_id, actor=ACTOR_CONSOLE)
    except GatewayError as e:
        return back(request, _tenant_url(tenant), error=e.message)
    return back(request, _tenant_url(tenant), ok=f"Delivery {delivery_id} is sent again.")


# --- upstream keys ----------------------------------------------------------------------------------------------------
@router.get("/upstream-keys")
async def upstream_keys_page(request: Request) -> Response:
    keys = (await Console.upstream_keys(request).list(limit=200)).data
    return render(request, "upstream_keys.html", keys=keys)


@router.post("/upstream-keys")
async def add_upstream_key(request: Request) -> Response:
    form = await request.form()
    values: dict[str, Any] = {"name": _form_text(form, "name"), "key": _form_text(form, "key")}
    try:
        values["weight"] = int(_form_text(form, "weight") or "1")
        values["max_in_flight"] = parse_limit_word(_form_text(form, "max_in_flight") or "unlimited")
        body = UpstreamKeyCreate.model_validate(values)
        added = await Console.upstream_keys(request).create(body, actor=ACTOR_CONSOLE)
    except (GatewayError, ValidationError) as e:
        if isinstance(e, ValidationError) and any(err["loc"][:1] == ("key",) for err in e.errors()):
            return back(request, f"{PATH}/upstream-keys", error="The key must be printable ASCII without spaces.")
        return back(request, f"{PATH}/upstream-keys", error=_refusal(e))
    except ValueError:
        return back(request, f"{PATH}/upstream-keys", error="Weight and cap are whole numbers.")
    return back(request, f"{PATH}/upstream-keys", ok=f"Upstream key {added.name} added ({added.id}).")


@router.post("/upstream-keys/{key_id}/{action}")
async def change_upstream_key(request: Request, key_id: str, action: str) -> Response:
    service = Console.upstream_keys(request)
    try:
        if action == "drain":
            key = await service.drain(key_id, actor=ACTOR_CONSOLE)
        elif action == "retire":
            key = await service.retire(key_id, actor=ACTOR_CONSOLE)
        elif action in ("enable", "disable"):
            body = UpstreamKeyUpdate.model_validate({"enabled": action == "enable"})
            key = await service.update(key_id, body, actor=ACTOR_CONSOLE)
        else:
            raise InvalidRequest(f"Unknown action {action!r}.")
    except GatewayError as e:
        return back(request, f"{PATH}/upstream-keys", error=e.message)
    return back(request, f"{PATH}/upstream-keys", ok=f"Upstream key {key.name} is {key.status}.")


# --- audit and tasks --------------------------------------------------------------------------------------------------
@router.get("/audit")
async def audit_page(
    request: Request,
    action: str = "",
    actor: str = "",
    target: str = "",
    outcome: str = "",
    cursor: str | None = None,
) -> Response:
    filters = {"action": action, "actor": actor, "target": target, "outcome": outcome}
    try:
        page = (
            await Console.of(request)
            .audit()
            .list(
                limit=50,
                cursor=cursor,
                target_id=target or None,
                action=action or None,
                actor=actor or None,
                outcome=outcome or None,
            )
        )
    except GatewayError as e:
        return render(request, "refused.html", status_code=e.status_code, message=e.message)
    next_url = f"{PATH}/audit?" + urlencode({**filters, "cursor": page.next_cursor}) if page.next_cursor else None
    return render(request, "audit.html", page=page, filters=filters, next_url=next_url)


@router.get("/tasks")
async def find_task(request: Request, id: str = "") -> Response:
    if id.strip():
        return RedirectResponse(f"{PATH}/tasks/{quote(id.strip(), safe='')}", status_code=303)
    return render(request, "task.html", task=None, deliveries=[])


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> Response:
    try:
        task = await Console.of(request).ledger().get(task_id)
        deliveries = await Console.webhooks(request).list_deliveries(task_id=task.id, limit=200)
    except GatewayError as e:
        return render(request, "refused.html", status_code=e.status_code, message=e.message)
    return render(request, "task.html", task=task, deliveries=deliveries.data)
