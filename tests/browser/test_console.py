"""The ops console (/admin/ui) in a real headless Chromium: an operator's afternoon, at 1280 px and at 390 px.

Sign in with the admin token (by keyboard), create a tenant and a key (shown once, never again), rotate it with a
grace period, revoke the old one (the API refuses it at once), edit a limit, drain an upstream key, and find each
action in the audit page; every page asks nothing of another host, labels every control, fits a phone's width, and
is kept as a screenshot (artifacts/screenshots). A form posted without its CSRF token is refused.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.fixtures.browser import Watched, watched_page
from tests.fixtures.gateway import ADMIN_TOKEN, Harness, completed_task
from tests.fixtures.live import serving

DEADLINE_MS = 30_000  # a deadline for a busy 2-core machine, not an expectation
UI = "/admin/ui"


@pytest.fixture
async def base(gw: Harness) -> AsyncIterator[str]:
    async with serving(gw.app) as url:
        yield url


async def unlabelled_controls(page: Page) -> list[str]:
    """Every visible form control without an accessible name (a <label>, aria-label or a button's text)."""
    names: list[str] = await page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
            .filter(e => e.offsetParent !== null || e.closest('dialog[open]'))
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !(e.tagName === 'BUTTON' && e.textContent.trim()))
            .map(e => e.outerHTML.slice(0, 120))"""
    )
    return names


async def check_page(watched: Watched, name: str, width: int) -> None:
    """What every console page must be: labelled controls, no sideways scrolling of the page, a screenshot."""
    page = watched.page
    assert await unlabelled_controls(page) == [], f"{name}: controls without a label"
    overflow = await page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"{name} at {width} px scrolls sideways by {overflow} px"
    await watched.screenshot(f"console-{name}-{width}")


async def sign_in(watched: Watched, base: str) -> None:
    page = watched.page
    await page.goto(f"{base}{UI}/")
    await expect(page).to_have_url(re.compile(r"/admin/ui/sign-in$"))
    await page.keyboard.type("not-the-admin-token")  # the token field has the focus
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("not the admin token")
    # The browser logs the 401 of that answer as a console error: the one expected here.
    assert watched.console_errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    watched.console_errors.clear()
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_label("Admin token").press("Enter")
    await expect(page.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()


async def test_an_operator_manages_tenants_keys_limits_and_upstream_keys(
    gw: Harness, base: str, browser: Browser
) -> None:
    watched = await watched_page(browser, width=1280)
    page = watched.page
    page.set_default_timeout(DEADLINE_MS)
    await sign_in(watched, base)
    await check_page(watched, "overview", 1280)

    # A tenant: its first key is shown once, in a dialog.
    await page.get_by_role("link", name="Tenants").click()
    await page.get_by_label("Name", exact=True).fill("acme")
    await page.get_by_role("button", name="Create tenant").click()
    await expect(page.get_by_role("heading", name=re.compile("^acme"))).to_be_visible()
    await expect(page.get_by_role("dialog")).to_be_visible()
    await page.get_by_role("button", name="I have copied it").click()

    # Another key, shown once and never again.
    await page.get_by_label("Label").fill("ci")
    await page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    key = await page.get_by_label(re.compile("^API key")).input_value()
    key_id = (await dialog.locator("code").inner_text()).strip()
    assert key.startswith("sk-") and key_id.startswith("key_")
    await page.get_by_role("button", name="I have copied it").click()
    await page.goto(f"{base}{UI}/tenants/acme")
    assert key not in await page.content(), "a key is shown once, never again"
    headers = {"Authorization": f"Bearer {key}"}
    assert (await gw.client.get("/v1/usage", headers=headers)).status_code == 200

    # Rotated with a grace period: the new key is shown once; the old one still works until revoked.
    row = page.get_by_role("row").filter(has_text=key_id)
    await row.get_by_label("Grace (minutes)").fill("30")
    await row.get_by_role("button", name="Rotate").click()
    await expect(page.get_by_role("dialog")).to_contain_text("rotation")
    rotated = await page.get_by_label(re.compile("^API key")).input_value()
    assert rotated.startswith("sk-") and rotated != key
    await page.get_by_role("button", name="I have copied it").click()
    assert (await gw.client.get("/v1/usage", headers=headers)).status_code == 200  # in its grace period
    await page.goto(f"{base}{UI}/tenants/acme")
    await page.get_by_role("button", name=f"Revoke {key_id}").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Key {key_id} revoked")
    assert (await gw.client.get("/v1/usage", headers=headers)).status_code == 401  # the API refuses it now
    assert (await gw.client.get("/v1/usage", headers={"Authorization": f"Bearer {rotated}"})).status_code == 200

    # A limit.
    await page.get_by_label("daily images").fill("40")
    await page.get_by_role("button", name="Save limits").click()
    await expect(page.get_by_role("status")).to_contain_text("Limits saved")
    limits = await gw.client.get("/admin/v1/tenants/acme/limits", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert limits.json()["daily_images"] == 40
    await check_page(watched, "tenant", 1280)
    # A refused action shows the service's own message.
    await page.get_by_role("link", name="Tenants").click()
    await page.get_by_label("Name", exact=True).fill("acme")
    await page.get_by_role("button", name="Create tenant").click()
    await expect(page.get_by_role("alert")).to_contain_text("acme")
    await check_page(watched, "tenants", 1280)

    # An upstream key drained.
    await page.get_by_role("link", name="Upstream keys").click()
    [upstream] = (
        await gw.client.get("/admin/v1/upstream-keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    ).json()["data"]
    await page.get_by_role("button", name=f"Drain {upstream['name']}").click()
    await expect(page.get_by_role("status")).to_contain_text("is draining")
    await check_page(watched, "upstream-keys", 1280)

    # Each action in the audit page, done by the console.
    await page.get_by_role("link", name="Audit log").click()
    await page.get_by_label("Actor").select_option("console")
    await page.get_by_role("button", name="Filter").click()
    table = page.get_by_role("table")
    for action in ("tenant.create", "key.create", "key.rotate", "key.revoke", "limits.update", "upstream_key.drain"):
        await expect(table.get_by_text(action, exact=True).first).to_be_visible()
    await expect(table.get_by_text("refused", exact=True).first).to_be_visible()  # the refused limit
    await check_page(watched, "audit", 1280)

    # A task by id.
    await page.get_by_role("link", name="Tasks").click()
    await check_page(watched, "task", 1280)
    watched.assert_clean()

    # A form posted without its CSRF token is refused, and nothing changes.
    await page.goto(f"{base}{UI}/tenants")
    await page.locator("form[action$='/tenants'] input[name=csrf]").evaluate("e => e.remove()")
    await page.get_by_label("Name", exact=True).fill("forged")
    await page.get_by_role("button", name="Create tenant").click()
    await expect(page.get_by_role("alert")).to_contain_text("did not come from the console")
    assert (
        await gw.client.get("/admin/v1/tenants/forged", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    ).status_code == 404

    # Signed out: the pages send back to the sign-in.
    await page.goto(f"{base}{UI}/")
    await page.get_by_role("button", name="Sign out").click()
    await page.goto(f"{base}{UI}/tenants")
    await expect(page).to_have_url(re.compile(r"/admin/ui/sign-in$"))


async def test_every_page_at_a_phones_width(gw: Harness, base: str, browser: Browser) -> None:
    key = await gw.new_tenant("acme")
    task_id = await completed_task(gw, key)  # something for the charts and the task page
    watched = await watched_page(browser, width=390, height=844)
    watched.page.set_default_timeout(DEADLINE_MS)
    await sign_in(watched, base)
    for name, path in (
        ("overview", "/"),
        ("tenants", "/tenants"),
        ("tenant", "/tenants/acme"),
        ("upstream-keys", "/upstream-keys"),
        ("audit", "/audit"),
        ("task", f"/tasks/{task_id}"),
    ):
        await watched.page.goto(f"{base}{UI}{path}")
        await check_page(watched, name, 390)
    watched.assert_clean()
