"""Dashboards, the cloud claim, editing rules and per-station roles in a real Chromium against a real
station (real MQTT devices, the bundled fake cloud, real HTTP, SSE and WebSockets)."""

from __future__ import annotations

import os
import re
from typing import Any

from playwright.async_api import Dialog, Page, expect

from tests.cloud.support import FAST
from tests.helpers import DeviceClient, StationHandle, start_station, wait_for
from tests.ui.support import SCREENSHOTS, login
from waystation.cloud.fake import FakeCloud

OWNER_PASSWORD = "owner-password-1"  # what StationHandle.owner_headers() sets


async def _accept(dialog: Dialog) -> None:
    await dialog.accept()


async def owner_page(page: Page, station: StationHandle) -> None:
    await station.owner_headers()
    await login(page, station.base_url, "owner", OWNER_PASSWORD)


async def test_dashboard_built_in_the_ui_shows_live_values(station: StationHandle, page: Page) -> None:
    await station.create_device("ui-board", "climate", name="Board climate")
    channel = "device:ui-board/temperature"
    async with DeviceClient(station.mqtt_port, station.station_id, "ui-board") as dev:
        await dev.publish("state", {"state": {"temperature": 20.0}})
        await owner_page(page, station)
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboards").click()
        await expect(page.get_by_test_id("dashboards-table")).to_contain_text("No dashboards yet")
        await page.get_by_label("New dashboard name").fill("Lab board")
        await page.get_by_label("Share with everyone at the station").check()
        await page.get_by_role("button", name="Create dashboard").click()
        await expect(page.get_by_role("heading", name="Lab board")).to_be_visible()

        # A stat and a line chart on the live device, from the editor.
        add = page.get_by_test_id("add-widget")
        await add.get_by_label("Kind").select_option("stat")
        await add.get_by_label("Title").fill("Air")
        await add.get_by_label("Channel", exact=True).fill(channel)
        await add.get_by_label("Unit").fill("°C")
        await add.get_by_role("button", name="Add widget").click()
        stat = page.locator('article[data-widget="Air"]')
        await expect(stat.get_by_test_id("widget-value")).to_have_text("20.0 °C")

        await add.get_by_label("Kind").select_option("line_chart")
        await add.get_by_label("Title").fill("Trend")
        await add.get_by_label("Channels (comma-separated)").fill(channel)
        await add.get_by_label("Range").select_option("15m")
        await add.get_by_role("button", name="Add widget").click()
        chart = page.locator(f'article[data-widget="Trend"] figure[data-channel="{channel}"]')
        await expect(chart).to_be_visible()

        # Move the chart down one row and save the layout: the station keeps the new place.
        await page.get_by_role("button", name="Move Trend down").click()
        await page.get_by_role("button", name="Save layout").click()
        # The button is also disabled while the request runs, so ask the station until it has the move.
        headers = await station.owner_headers()
        boards = (await station.client.get("/api/v1/dashboards", headers=headers)).json()["items"]

        async def places() -> dict[str, Any] | None:
            r = await station.client.get(f"/api/v1/dashboards/{boards[0]['id']}", headers=headers)
            found = {w["title"]: w["position"] for w in r.json()["widgets"]}
            return found if found.get("Trend", {}).get("y") == 1 else None

        saved = await wait_for(places, message="the saved layout")
        assert saved["Air"] == {"x": 0, "y": 0, "w": 3, "h": 2}
        assert saved["Trend"] == {"x": 3, "y": 1, "w": 6, "h": 4}
        await expect(page.get_by_role("button", name="Save layout")).to_be_disabled()
        await page.get_by_role("button", name="Done").click()
        await expect(page.get_by_test_id("add-widget")).to_have_count(0)

        # Live: new readings reach the stat and the chart without a reload.
        before = int(await chart.get_attribute("data-points") or "0")
        for i in range(1, 4):
            await dev.publish("state", {"state": {"temperature": 20.0 + i}})
            await expect(stat.get_by_test_id("widget-value")).to_have_text(f"{20.0 + i:.1f} °C")
        await expect(chart).not_to_have_attribute("data-points", str(before))

        # The board survives a reload, and the list shows it as shared.
        await page.reload()
        await expect(stat.get_by_test_id("widget-value")).to_have_text("23.0 °C")
        if os.environ.get("WAYSTATION_SCREENSHOTS") == "1":  # the picture in docs/ui.md
            await expect(chart).not_to_have_attribute("data-points", "0")
            await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
        await page.get_by_role("link", name="← Dashboards").click()
        await expect(page.locator('tr[data-dashboard="Lab board"]')).to_contain_text(
            "everyone at the station"
        )


async def test_viewer_sees_a_shared_board_without_edit_or_command_controls(
    station: StationHandle, page: Page
) -> None:
    await station.create_device("ui-lamp", "light", name="Lamp")
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/dashboards", headers=owner, json={"name": "Hall", "shared": True})
    assert r.status_code == 201, r.text
    board_id = r.json()["id"]
    for body in (
        {
            "kind": "device_control",
            "title": "Lamp control",
            "position": {"x": 0, "y": 0, "w": 4, "h": 2},
            "config": {"device_id": "ui-lamp"},
        },
        {"kind": "event_list", "title": "Log", "position": {"x": 4, "y": 0, "w": 6, "h": 3}, "config": {}},
    ):
        r = await station.client.post(f"/api/v1/dashboards/{board_id}/widgets", headers=owner, json=body)
        assert r.status_code == 201, r.text

    await station.user_headers("vera", "viewer")
    await login(page, station.base_url, "vera", "vera-password-1")
    await page.goto(f"{station.base_url}/dashboards/{board_id}")
    await expect(page.get_by_role("heading", name="Hall")).to_be_visible()
    control = page.locator('article[data-widget="Lamp control"]')
    await expect(control.get_by_role("button", name="set_power")).to_be_disabled()
    await expect(control).to_contain_text("may not send commands")
    await expect(page.get_by_role("button", name="Edit dashboard")).to_have_count(0)
    await expect(page.get_by_test_id("add-widget")).to_have_count(0)

    # A member of the station presses the button: an ordinary command reaches the device.
    await page.get_by_role("button", name="Log out").click()
    await station.user_headers("max", "member")
    async with DeviceClient(station.mqtt_port, station.station_id, "ui-lamp") as dev:
        await dev.publish("state", {"state": {"on": False}})
        await login(page, station.base_url, "max", "max-password-1")
        await page.goto(f"{station.base_url}/dashboards/{board_id}")
        await expect(page.get_by_role("button", name="Edit dashboard")).to_be_visible()
        await control.get_by_role("button", name="set_brightness").click()
        await control.get_by_label("brightness").fill("40")
        await control.get_by_role("button", name="Send set_brightness").click()
        command = await wait_for(lambda: dev.messages("command"), message="the command over MQTT")
        assert command[0]["action"] == "set_brightness" and command[0]["brightness"] == 40
        await dev.publish("command/ack", {"request_id": command[0]["request_id"], "status": "applied"})
        await expect(control.get_by_role("status")).to_contain_text("applied")


async def test_owner_claims_and_unclaims_the_cloud_link(settings_factory: Any, page: Page) -> None:
    async with (
        FakeCloud(control_port=0) as fake,
        start_station(settings_factory(cloud_url=fake.url, **FAST)) as station,
    ):
        page.on("dialog", _accept)
        await station.user_headers("ada", "admin")
        # An installation admin sees the chip id and the secret, but only an owner claims.
        await login(page, station.base_url, "ada", "ada-password-1")
        await page.goto(f"{station.base_url}/cloud")
        chip = page.get_by_test_id("chip-id")
        await expect(chip).to_have_text(re.compile(r"^ws-"))
        await expect(page.get_by_role("button", name="Claim")).to_have_count(0)
        await page.get_by_role("button", name="Log out").click()

        await owner_page(page, station)
        await page.goto(f"{station.base_url}/cloud")
        await expect(page.get_by_test_id("cloud-state")).to_have_text("disabled")
        chip_id = (await chip.text_content() or "").strip()
        secret = page.get_by_test_id("claim-secret")
        await page.get_by_role("button", name="Show").click()
        first_secret = (await secret.text_content() or "").strip()
        assert len(first_secret) > 10
        await page.get_by_role("button", name="Claim", exact=True).click()
        # Live over SSE (cloud.status_changed): no reload.
        await expect(page.get_by_test_id("cloud-state")).to_have_text("connected")
        await expect(page.get_by_test_id("cloud-claimed")).to_have_text("claimed")
        await wait_for(lambda: chip_id in fake.stations and fake.stations[chip_id].connected, message="auth")

        await page.get_by_role("button", name="Unclaim").click()
        await expect(page.get_by_test_id("cloud-state")).to_have_text("disabled")
        await expect(page.get_by_test_id("cloud-claimed")).to_have_text("not claimed")
        await expect(secret).not_to_have_text(first_secret)  # unclaiming issues a new secret
        await wait_for(lambda: not fake.stations[chip_id].connected, message="disconnected")


async def test_rule_edited_in_the_ui_sends_a_command_and_calls_webhooks(
    station: StationHandle, page: Page
) -> None:
    await station.create_device("ui-temp", "climate")
    await station.create_device("ui-fan", "light")
    owner = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/rules",
        headers=owner,
        json={
            "name": "Warm",
            "channel": "device:ui-temp/temperature",
            "operator": "gt",
            "threshold": 40,
            "actions": [{"type": "alert"}],
        },
    )
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]

    await owner_page(page, station)
    await page.goto(f"{station.base_url}/rules")
    row = page.locator('tr[data-rule="Warm"]')
    await row.get_by_role("button", name="Edit").click()
    form = page.get_by_test_id("rule-form")
    await expect(form.get_by_label("Threshold", exact=True)).to_have_value("40")
    await form.get_by_label("Threshold", exact=True).fill("25")
    await form.get_by_label("Action", exact=True).select_option("command")
    await form.get_by_label("Command device").fill("ui-fan")
    await form.get_by_label("Command name").fill("set_brightness")
    await form.get_by_label("Parameters (JSON)").fill("{brightness: 50}")
    await form.get_by_role("button", name="Save rule").click()
    await expect(form.get_by_text("Not valid JSON.")).to_be_visible()
    await form.get_by_label("Parameters (JSON)").fill('{"brightness": 50}')
    await form.get_by_role("button", name="Add action").click()
    await form.get_by_label("Action 2", exact=True).select_option("webhook")
    await form.get_by_role("button", name="Save rule").click()
    await expect(form).to_have_count(0)
    await expect(row.get_by_test_id("rule-condition")).to_contain_text("> 25")
    await expect(row.get_by_test_id("rule-actions")).to_have_text("command set_brightness → ui-fan, webhook")

    rule = (await station.client.get(f"/api/v1/rules/{rule_id}", headers=owner)).json()
    assert rule["threshold"] == 25
    assert rule["actions"] == [
        {"type": "command", "device_id": "ui-fan", "action": "set_brightness", "params": {"brightness": 50}},
        {"type": "webhook"},
    ]

    # It fires on the new threshold and its command reaches the fan over MQTT.
    async with (
        DeviceClient(station.mqtt_port, station.station_id, "ui-fan") as fan,
        DeviceClient(station.mqtt_port, station.station_id, "ui-temp") as temp,
    ):
        await fan.publish("state", {"state": {"on": True}})
        await temp.publish("state", {"state": {"temperature": 30.0}})
        command = await wait_for(lambda: fan.messages("command"), message="the rule's command")
        assert command[0]["action"] == "set_brightness" and command[0]["brightness"] == 50
        await expect(row.get_by_test_id("last-fired")).not_to_have_text("—")


async def test_menu_and_controls_follow_the_role_at_the_station_viewed(
    station: StationHandle, page: Page
) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Greenhouse"})
    assert r.status_code == 201, r.text
    other = r.json()["id"]
    mia = await station.user_headers("mia", "viewer")  # a viewer of the default station
    r = await station.client.post(
        f"/api/v1/stations/{other}/members", headers=owner, json={"username": "mia", "role": "admin"}
    )
    assert r.status_code == 201, r.text
    r = await station.client.post(
        "/api/v1/devices", headers=owner, json={"id": "gh-lamp", "type": "light", "station_id": other}
    )
    assert r.status_code == 201, r.text
    await station.create_device("home-lamp", "light")

    me = (await station.client.get("/api/v1/auth/me", headers=mia)).json()
    assert me["role"] == "viewer"
    assert {s["id"]: s["role"] for s in me["stations"]} == {station.station_id: "viewer", other: "admin"}

    await login(page, station.base_url, "mia", "mia-password-1")
    nav = page.get_by_role("navigation", name="Main")
    select = page.get_by_test_id("station-select")
    await select.select_option(station.station_id)
    await expect(page.get_by_test_id("current-role")).to_have_text("viewer")
    await expect(nav.get_by_role("link", name="Webhooks")).to_have_count(0)
    await nav.get_by_role("link", name="Devices").click()
    await expect(page.locator('tr[data-device="home-lamp"]')).to_be_visible()
    await expect(page.locator('tr[data-device="gh-lamp"]')).to_have_count(0)
    await expect(page.get_by_role("button", name="Add device")).to_have_count(0)

    await select.select_option(other)
    await expect(page.get_by_test_id("current-role")).to_have_text("admin")
    await expect(nav.get_by_role("link", name="Webhooks")).to_be_visible()
    await expect(nav.get_by_role("link", name="Users & tokens")).to_be_visible()
    # Installation-wide sections follow the installation role (viewer), not the station's.
    await expect(nav.get_by_role("link", name="Flows")).to_have_count(0)
    await expect(page.locator('tr[data-device="gh-lamp"]')).to_be_visible()
    await expect(page.locator('tr[data-device="home-lamp"]')).to_have_count(0)
    await expect(page.get_by_role("button", name="Add device")).to_be_visible()
    await page.goto(f"{station.base_url}/devices/gh-lamp")
    await expect(page.get_by_test_id("command-form")).to_be_visible()
    await expect(page.get_by_role("button", name="Rotate device token")).to_be_visible()

    # Back at the default station, a page only its admins use leads home.
    await page.goto(f"{station.base_url}/webhooks")
    await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    await select.select_option(station.station_id)
    await expect(page.get_by_role("heading", name="Home")).to_be_visible()
