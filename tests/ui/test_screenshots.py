"""Every main view renders against a demo station without an error; their screenshots go to docs/images.

The pictures are written to docs/images only with WAYSTATION_SCREENSHOTS=1 (so a test run leaves the
work tree alone); otherwise to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.helpers import start_station
from tests.ui.support import SCREENSHOTS, login

VIEWS = [
    ("home", "/", "Home"),
    ("devices", "/devices", "Devices"),
    ("telemetry", "/telemetry", "Telemetry explorer"),
    ("dashboards", "/dashboards", "Dashboards"),
    ("firmware", "/firmware", "Firmware and rollouts"),
    ("flows", "/flows", "Flows"),
    ("rules", "/rules", "Rules"),
    ("system", "/system", "System"),
    ("access", "/access", "Users, members and API tokens"),
    ("audit", "/audit", "Audit log"),
    ("cloud", "/cloud", "Cloud link and broker sync"),
    ("mcp", "/confirmations", "MCP confirmation inbox"),
    ("webhooks", "/webhooks", "Webhooks"),
    ("snapshots", "/snapshots", "Snapshots"),
]


def _target(tmp_path: Path) -> Path:
    return SCREENSHOTS if os.environ.get("WAYSTATION_SCREENSHOTS") == "1" else tmp_path


async def _no_error(page: Page) -> None:
    await expect(page.locator(".notice.error")).to_have_count(0)


@pytest.mark.slow(15)
async def test_main_views_render_on_a_demo_station(
    settings_factory, browser: Browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = _target(tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    async with start_station(settings_factory(demo_devices=6), demo=True) as station:
        line = next(a for a in station.announcements if "Demo owner account" in a)
        password = re.search(r"password '([^']+)'", line).group(1)  # type: ignore[union-attr]
        owner = {
            "Authorization": f"Bearer {(await station.client.post('/api/v1/auth/login', json={'username': 'admin', 'password': password})).json()['access_token']}"
        }
        await station.client.post(
            "/api/v1/flows",
            headers=owner,
            json={
                "code": "zigbee-living",
                "topic": "zigbee2mqtt/living",
                "action": "STORE_DB",
                "payload_schema": {"temperature": "number", "humidity": "number"},
            },
        )
        await station.client.post(
            "/api/v1/rules",
            headers=owner,
            json={
                "name": "Too warm",
                "channel": "device:demo-0001/temperature",
                "operator": "gt",
                "threshold": 28,
                "actions": [{"type": "alert", "message": "It is warm"}],
            },
        )

        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        page = await context.new_page()
        await login(page, station.base_url, "admin", password)
        await expect(page.get_by_test_id("devices-online")).not_to_have_text("0")
        for name, path, heading in VIEWS:
            await page.goto(f"{station.base_url}{path}")
            await expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            await _no_error(page)
            await page.wait_for_timeout(300)  # let the charts and tables settle before the picture
            await page.screenshot(path=str(out / f"{name}.png"))

        await page.goto(f"{station.base_url}/telemetry")
        await page.get_by_label("device:demo-0001/temperature").check()
        await page.get_by_label("device:demo-0001/humidity").check()
        await expect(
            page.locator('figure[data-channel="device:demo-0001/temperature"]')
        ).not_to_have_attribute("data-points", "0")
        await _no_error(page)
        await page.screenshot(path=str(out / "telemetry.png"), full_page=True)

        await page.goto(f"{station.base_url}/devices/demo-0001")
        chart = page.locator('figure[data-channel="device:demo-0001/temperature"]')
        await expect(chart).not_to_have_attribute("data-points", "0")
        await _no_error(page)
        await page.screenshot(path=str(out / "device.png"), full_page=True)

        # Dark theme through the toggle (system → light → dark).
        await page.goto(f"{station.base_url}/")
        toggle = page.get_by_role("button", name=re.compile("^Theme"))
        await toggle.click()
        await toggle.click()
        await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        await page.screenshot(path=str(out / "home-dark.png"))
        await context.close()

        # A phone: the menu folds away behind a button.
        phone = await browser.new_context(viewport={"width": 360, "height": 740})
        page = await phone.new_page()
        await login(page, station.base_url, "admin", password)
        await page.goto(f"{station.base_url}/devices")
        # Let the first navigation settle before opening the menu.
        await expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()
        await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
        await page.get_by_role("button", name="Menu").click()
        await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        await page.get_by_role("button", name="Menu").click()
        await page.screenshot(path=str(out / "devices-phone.png"))
        await phone.close()
