"""Browser tests: a real headless Chromium (tests/fixtures/browser.py) against the gateway on a loopback socket."""

from __future__ import annotations

from tests.fixtures.browser import browser as browser

__all__ = ["browser"]
