"""Fixtures of the browser tests: the UI build (session), a real Chromium per test, a fresh page."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.ui.support import EXPECT_MS, ensure_build, ensure_chromium

# The browser tests drive the UI, not the database: they run once, in the SQLite pass of the suite (the
# API beneath them is tested on both databases), which keeps `make test` well under 15 minutes.
BROWSER_TESTS = ("test_ui.py", "test_ui_more.py", "test_screenshots.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("WAYSTATION_TEST_DB", "sqlite") != "postgresql":
        return
    skip = pytest.mark.skip(
        reason="browser tests run in the SQLite pass (the UI does not depend on the database)"
    )
    for item in items:
        if item.path.name in BROWSER_TESTS:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ui_build() -> None:
    ensure_build()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return ensure_chromium()


@pytest.fixture
async def browser(ui_build: None, chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(EXPECT_MS)
    expect.set_options(timeout=EXPECT_MS)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()
