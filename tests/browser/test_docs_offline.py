"""/docs and /redoc render in a real browser with every other host refused: their scripts ship in the package."""

from __future__ import annotations

from playwright.async_api import Browser

from tests.fixtures.browser import watched_page
from tests.fixtures.gateway import Harness
from tests.fixtures.live import serving

REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
DEADLINE_MS = 30_000  # a deadline, not an expectation: ReDoc parses a 1 MB script on a busy 2-core machine


async def test_swagger_ui_and_redoc_render_without_the_internet(gw: Harness, browser: Browser) -> None:
    async with serving(gw.app) as base:
        docs = await watched_page(browser)
        await docs.page.goto(f"{base}/docs")
        # Swagger UI drew the operations it read from /openapi.json: its script ran, from this host.
        await docs.page.locator(".opblock-summary-path", has_text="/v1/images/generations").first.wait_for(
            timeout=DEADLINE_MS
        )
        await docs.screenshot("docs-swagger-ui")
        docs.assert_clean()
        assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in docs.requests)

        redoc = await watched_page(browser)
        await redoc.page.goto(f"{base}/redoc")
        await redoc.page.locator("h2", has_text="Create an image generation task").first.wait_for(timeout=DEADLINE_MS)
        await redoc.screenshot("docs-redoc")
        # ReDoc's sidebar links its maker's logo, an image from their CDN: refused here, and nothing else is.
        assert all(url.startswith(REDOCLY_LOGO) for url in redoc.refused), redoc.refused
        assert not redoc.page_errors
        assert any(url.endswith("/docs/assets/redoc.standalone.js") for url in redoc.requests)
