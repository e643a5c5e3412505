"""The web UI in a real Chromium against a real station (real MQTT devices, real HTTP and SSE)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiomqtt
import orjson
from playwright.async_api import Page, expect

from tests.helpers import DeviceClient, StationHandle, free_port, start_station, wait_for
from tests.ui.support import login

OWNER_PASSWORD = "owner-password-1"  # what StationHandle.owner_headers() sets
AGENT_TOKEN = "agent-token-for-ui-tests-1"
GOOD = "24:0A:C4:3F:2A:01"  # a candidate of the simulated BLE bridge that provisions and joins


async def owner_page(page: Page, station: StationHandle) -> None:
    await station.owner_headers()
    await login(page, station.base_url, "owner", OWNER_PASSWORD)


async def test_first_run_setup_then_logout_and_login(station: StationHandle, page: Page) -> None:
    await page.goto(f"{station.base_url}/setup?token={station.setup_token()}")
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password", exact=True).fill("alice-password-1")
    await page.get_by_label("Repeat the password").fill("alice-password-1")
    await page.get_by_role("button", name="Create owner").click()
    await expect(page.get_by_role("heading", name="Home")).to_be_visible()
    await expect(page.get_by_test_id("current-user")).to_contain_text("alice")
    await expect(page.get_by_test_id("live-indicator")).to_have_text("Live")

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in to Waystation")).to_be_visible()
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill("wrong-password")
    await page.get_by_role("button", name="Log in").click()
    # The problem's message, not a stack or a status code.
    await expect(page.get_by_role("alert")).to_contain_text(re.compile("password", re.I))

    await login(page, station.base_url, "alice", "alice-password-1")
    await expect(page.get_by_role("heading", name="Home")).to_be_visible()


async def test_device_appears_live_and_its_chart_updates(station: StationHandle, page: Page) -> None:
    await station.create_device("ui-clim", "climate", name="Lab climate")
    await owner_page(page, station)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Devices").click()
    row = page.locator('tr[data-device="ui-clim"]')
    await expect(row).to_contain_text("unknown")

    async with DeviceClient(station.mqtt_port, station.station_id, "ui-clim") as dev:
        await dev.publish("state", {"state": {"temperature": 21.5, "humidity": 40}})
        await expect(row).to_contain_text("online")  # pushed over SSE, no reload
        await expect(row).to_contain_text("temperature: 21.50")

        await row.get_by_role("link", name="Lab climate").click()
        chart = page.locator('figure[data-channel="device:ui-clim/temperature"]')
        await expect(chart).to_be_visible()
        await expect(chart).not_to_have_attribute("data-points", "0")
        before = int(await chart.get_attribute("data-points") or "0")
        value = page.locator('dd[data-channel="device:ui-clim/temperature"]')
        for i in range(1, 4):
            await dev.publish("state", {"state": {"temperature": 21.5 + i}})
            await expect(value).to_contain_text(f"{21.5 + i:.2f}")
        await expect(chart).not_to_have_attribute("data-points", str(before))


async def test_command_goes_to_applied_live(station: StationHandle, page: Page) -> None:
    await station.create_device("ui-light", "light", name="Desk light")
    async with DeviceClient(station.mqtt_port, station.station_id, "ui-light") as dev:
        await dev.publish("state", {"state": {"on": False, "brightness": 10}})
        await owner_page(page, station)
        await page.goto(f"{station.base_url}/devices/ui-light")
        await expect(page.get_by_test_id("device-status")).to_have_text("online")
        await page.get_by_label("Command").select_option("set_brightness")
        await page.get_by_label("brightness", exact=True).fill("70")
        sent_url = re.compile(r".*/api/v1/devices/ui-light/commands$")
        async with page.expect_response(
            lambda r: bool(sent_url.match(r.url)) and r.request.method == "POST"
        ) as sent:
            await page.get_by_role("button", name="Send").click()
        assert (await sent.value).status == 202, await (await sent.value).text()

        command = await wait_for(lambda: dev.messages("command"), timeout=20, message="the command over MQTT")
        request_id = command[0]["request_id"]
        assert command[0]["action"] == "set_brightness"
        status = page.get_by_test_id(f"command-status-{request_id}")
        await expect(status).to_have_text(re.compile("queued|sent"))
        await dev.publish("command/ack", {"request_id": request_id, "status": "accepted"})
        await expect(status).to_have_text("accepted")
        await dev.publish("command/ack", {"request_id": request_id, "status": "applied"})
        await expect(status).to_have_text("applied")


async def test_flow_created_in_the_ui_counts_messages(station: StationHandle, page: Page) -> None:
    await owner_page(page, station)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Flows").click()
    await page.get_by_role("button", name="New flow").click()
    await page.get_by_label("Code").fill("uiflow")
    await page.get_by_label("MQTT topic filter").fill("ui/test/+/climate")
    await page.get_by_label(re.compile("Payload schema")).fill("not json")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_text(re.compile("Not valid JSON"))).to_be_visible()
    await page.get_by_label(re.compile("Payload schema")).fill('{"temperature": "number"}')
    await page.get_by_role("button", name="Save").click()
    row = page.locator('tr[data-flow="uiflow"]')
    await expect(row.get_by_test_id("accepted")).to_have_text("0")
    await wait_for(lambda: "uiflow" in station.ctx.flows.flows, message="flow subscribed")

    async with aiomqtt.Client("127.0.0.1", station.mqtt_port, identifier="ui-flow-pub") as client:
        for i in range(3):
            await client.publish("ui/test/room1/climate", orjson.dumps({"temperature": 20 + i}), qos=1)
        await client.publish("ui/test/room1/climate", b'{"temperature": "warm"}', qos=1)
    await expect(row.get_by_test_id("accepted")).to_have_text("3")
    await expect(row.get_by_test_id("rejected")).to_have_text("1")


async def test_rule_created_in_the_ui_fires(station: StationHandle, page: Page) -> None:
    await station.create_device("ui-hot", "climate")
    await owner_page(page, station)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Rules").click()
    await page.get_by_role("button", name="New rule").click()
    await page.get_by_label("Name").fill("Too warm")
    await page.get_by_label("Channel").fill("device:ui-hot/temperature")
    await page.get_by_label("Operator").select_option("gt")
    await page.get_by_label("Threshold").fill("30")
    await page.get_by_role("button", name="Create rule").click()
    row = page.locator('tr[data-rule="Too warm"]')
    await expect(row.get_by_test_id("last-fired")).to_have_text("—")
    await row.get_by_role("button", name="Firings").click()
    await expect(page.get_by_test_id("firings-table")).to_contain_text("Not fired yet")

    async with DeviceClient(station.mqtt_port, station.station_id, "ui-hot") as dev:
        await dev.publish("state", {"state": {"temperature": 35.0}})
        await expect(row.get_by_test_id("last-fired")).not_to_have_text("—")  # rule.fired over SSE
        await expect(page.get_by_test_id("firings-table")).to_contain_text("35")


async def test_viewer_sees_no_control_buttons(station: StationHandle, page: Page) -> None:
    await station.create_device("ui-view", "light")
    await station.user_headers("vera", "viewer")
    await login(page, station.base_url, "vera", "vera-password-1")
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Devices")).to_be_visible()
    for hidden in ("Flows", "Webhooks", "Users & tokens", "Audit log", "Snapshots"):
        await expect(nav.get_by_role("link", name=hidden)).to_have_count(0)

    await nav.get_by_role("link", name="Devices").click()
    await expect(page.locator('tr[data-device="ui-view"]')).to_be_visible()
    await expect(page.get_by_role("button", name="Add device")).to_have_count(0)

    await page.goto(f"{station.base_url}/devices/ui-view")
    await expect(page.get_by_role("heading", name="Commands")).to_be_visible()
    await expect(page.get_by_test_id("command-form")).to_have_count(0)
    await expect(page.get_by_role("button", name="Send")).to_have_count(0)
    await expect(page.get_by_role("button", name="Rotate device token")).to_have_count(0)

    await nav.get_by_role("link", name="Rules").click()
    await expect(page.get_by_role("heading", name="Rules")).to_be_visible()
    await expect(page.get_by_role("button", name="New rule")).to_have_count(0)

    # A page the role may not use sends the viewer home instead of showing it.
    await page.goto(f"{station.base_url}/flows")
    await expect(page.get_by_role("heading", name="Home")).to_be_visible()


async def test_mcp_confirmation_is_approved_from_the_inbox(settings_factory: Any, page: Page) -> None:
    from tests.mcp.support import make_token, mcp_session, result_json

    async with start_station(settings_factory(mcp_confirmation_wait_seconds=20)) as station:
        await station.create_device("ui-lamp", "light")
        await owner_page(page, station)
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="MCP inbox").click()
        await expect(page.get_by_text("Nothing waiting for a decision.")).to_be_visible()

        token = await make_token(station, ["mcp:write"])
        async with mcp_session(station, token) as session:
            call = asyncio.create_task(
                session.call_tool(
                    "send_command",
                    {"device_id": "ui-lamp", "action": "set_brightness", "params": {"brightness": 40}},
                )
            )
            card = page.locator("[data-confirmation]")
            await expect(card).to_contain_text("send_command")  # arrives over SSE, no reload
            await expect(card).to_contain_text("set_brightness")
            await card.get_by_role("button", name="Approve").click()
            result = result_json(await asyncio.wait_for(call, 15))
            assert result["status"] == "executed"
            await expect(card).to_have_count(0)  # decided: gone from the pending list


async def test_snapshot_export_downloads_an_encrypted_file(station: StationHandle, page: Page) -> None:
    await owner_page(page, station)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Snapshots").click()
    await page.get_by_label("Passphrase", exact=True).first.fill("a long passphrase")
    async with page.expect_download() as info:
        await page.get_by_role("button", name="Export and download").click()
    download = await info.value
    path = await download.path()
    assert download.suggested_filename.endswith(".age")
    assert path.read_bytes().startswith(b"age-encryption.org/v1")
    await expect(page.get_by_text(re.compile(r"^Exported waystation-.*\.age"))).to_be_visible()


async def test_device_is_provisioned_through_the_simulated_bridge(settings_factory: Any, page: Page) -> None:
    settings = settings_factory(
        mqtt_url=f"embedded://127.0.0.1:{free_port()}",
        broker_sync_poll_seconds=0.2,
        agent_token=AGENT_TOKEN,
        ble_simulate=True,
        provisioning_join_timeout_seconds=10.0,
    )
    async with start_station(settings) as station:
        await wait_for(lambda: station.ctx.mqtt is not None and station.ctx.mqtt.connected, message="link")
        r = await station.client.put(
            "/api/v1/agent/wifi",
            headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
            json={"ssid": "HomeNet", "password": "wifi-passphrase-1"},
        )
        assert r.status_code == 200, r.text
        await owner_page(page, station)
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Provisioning").click()
        await expect(page.get_by_text("HomeNet")).to_be_visible()
        await expect(page.get_by_test_id("scan-state")).to_have_text("started")
        row = page.locator(f'tr[data-address="{GOOD}"]')
        await row.get_by_role("button", name="Provision").click()
        await page.get_by_label("Name").fill("Kitchen climate")
        await page.get_by_role("button", name="Start").click()
        job = page.locator("[data-job]").first
        await expect(job.get_by_test_id("job-state")).to_have_text("succeeded", timeout=30_000)
        await job.get_by_role("link").click()
        await expect(page.get_by_role("heading", name="Kitchen climate")).to_be_visible()
        await expect(page.get_by_test_id("device-status")).to_have_text("online", timeout=30_000)
