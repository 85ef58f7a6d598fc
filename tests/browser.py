"""Headless Chromium for the web tests: Debian's `chromium`, driven by Playwright for Python.

Playwright cannot download its own browser here, so it is pointed at the system's with
`executable_path`. The flags keep Chromium from reaching out to Google's servers, which a
closed network refuses (and which tests have no business calling).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

import pytest

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def chromium_path() -> str:
    """The system's Chromium; the test is skipped, saying how to get it, when there is none
    (./canvas test installs it where it runs as root, as in CI)."""
    found = os.environ.get("CANVAS_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium: install Debian's chromium package (sudo apt-get install "
                    "chromium), or set CANVAS_CHROMIUM to a Chromium binary")
    return found


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(),
                                                   args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()
