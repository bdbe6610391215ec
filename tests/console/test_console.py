"""The console's sign-in rules through the ASGI app: the session cookie, its idle expiry, CSRF on every form (the
sign-in's included), the throttle on wrong tokens; and the console stays out of the OpenAPI document."""

from __future__ import annotations

import re

import httpx

from app.console.sessions import IDLE_S, MAX_FAILURES, WINDOW_S
from tests.fixtures.gateway import ADMIN_TOKEN, Harness

UI = "/admin/ui"


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    form = await client.get(f"{UI}/sign-in")
    return await client.post(f"{UI}/sign-in", data={"csrf": csrf_of(form), "token": token})


async def test_the_session_cookie_and_its_idle_expiry(gw: Harness) -> None:
    assert (await gw.client.get(f"{UI}/tenants")).headers["location"] == f"{UI}/sign-in"
    signed = await sign_in(gw.client)
    assert signed.status_code == 303 and signed.headers["location"] == f"{UI}/"
    cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("gw_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here; behind TLS it is Secure (next test)
    page = await gw.client.get(f"{UI}/tenants")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    gw.clock.advance(IDLE_S - 60)
    assert (await gw.client.get(f"{UI}/tenants")).status_code == 200  # used: the idle time starts again
    gw.clock.advance(IDLE_S - 60)
    assert (await gw.client.get(f"{UI}/tenants")).status_code == 200
    gw.clock.advance(IDLE_S + 1)
    assert (await gw.client.get(f"{UI}/tenants")).headers["location"] == f"{UI}/sign-in"


async def test_behind_tls_the_cookie_is_secure(gw: Harness) -> None:
    transport = httpx.ASGITransport(app=gw.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gateway.test") as client:
        signed = await sign_in(client)
    cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("gw_console="))
    assert "Secure" in cookie


async def test_every_form_needs_its_csrf_token(gw: Harness) -> None:
    page = await gw.client.get(f"{UI}/sign-in")
    refused = await gw.client.post(f"{UI}/sign-in", data={"token": ADMIN_TOKEN})  # no token in the form
    assert refused.status_code == 403 and "gw_console=" not in refused.headers.get("set-cookie", "")
    gw.client.cookies.clear()  # no pre-session cookie: the form's token alone proves nothing
    refused = await gw.client.post(f"{UI}/sign-in", data={"csrf": csrf_of(page), "token": ADMIN_TOKEN})
    assert refused.status_code == 403
    await sign_in(gw.client)
    tenants = await gw.client.get(f"{UI}/tenants")
    for forged in ({"name": "x"}, {"name": "x", "csrf": "not-the-token"}):
        assert (await gw.client.post(f"{UI}/tenants", data=forged)).status_code == 403
    made = await gw.client.post(f"{UI}/tenants", data={"name": "acme", "csrf": csrf_of(tenants)})
    assert made.status_code == 200 and "shown this once" in made.text


async def test_wrong_tokens_are_throttled(gw: Harness) -> None:
    for _ in range(MAX_FAILURES):
        assert (await sign_in(gw.client, "wrong-token-0123456789")).status_code == 401
    throttled = await sign_in(gw.client)  # even the right token, until the window has passed
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
    gw.clock.advance(WINDOW_S + 1)
    assert (await sign_in(gw.client)).status_code == 303


async def test_the_console_is_not_part_of_the_api_document(gw: Harness) -> None:
    paths = (await gw.client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(UI)]


async def test_a_tenant_page_shows_its_kept_images_and_deletes_them(gw: Harness) -> None:
    await gw.new_tenant("acme")
    await sign_in(gw.client)
    page = await gw.client.get(f"{UI}/tenants/acme")
    assert page.status_code == 200 and "Kept images" in page.text and "Delete every kept image" in page.text
    refused = await gw.client.post(f"{UI}/tenants/acme/images/delete", data={})
    assert refused.status_code == 403  # no CSRF token
    done = await gw.client.post(f"{UI}/tenants/acme/images/delete", data={"csrf": csrf_of(page)})
    assert done.status_code in (200, 303), done.text
    audit = await gw.client.get("/admin/v1/audit", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert any(e["actor"] == "console" and e["action"] == "results.delete" for e in audit.json()["data"]), audit.text
