"""Projections built in the backend: the home overview, system health, a device's workspace, the
`system.status` event (only while someone listens) and the delivery and backlog metrics."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import update

from tests.helpers import DeviceClient, HttpReceiver, StationHandle, start_station, wait_for
from tests.realtime.test_sse import read_events
from waystation.rules.models import Alert
from waystation.telemetry.models import Channel


async def _second_station(station: StationHandle) -> str:
    r = await station.client.post(
        "/api/v1/stations", headers=await station.owner_headers(), json={"name": "Lab B"}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _alert(station: StationHandle, station_id: str, message: str) -> None:
    async with station.ctx.db.session() as session:
        session.add(Alert(station_id=station_id, rule_name="Too warm", message=message, status="active"))


async def test_home_counts_devices_alerts_and_events_of_visible_stations_only(station: StationHandle) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    await station.create_device("h-a1", "climate")
    await station.create_device("h-a2", "climate")
    await station.create_device("h-b1", "climate", station_id=b)
    await _alert(station, station.station_id, "A is warm")
    await _alert(station, b, "B is warm")
    async with DeviceClient(station.mqtt_port, station.station_id, "h-a1") as dev:
        await dev.publish("handshake", {"type": "climate", "firmwareVersion": "1.0.0"})
        await dev.publish("event", {"event": "device_event", "data": {"action": "door_opened"}})
        await wait_for(
            lambda: station.ctx.devices is not None and station.ctx.devices.known["h-a1"].status == "online",
            message="h-a1 online",
        )

        async def event_listed() -> dict[str, Any] | None:
            r = await station.client.get("/api/v1/status/home", headers=owner)
            assert r.status_code == 200, r.text
            body = dict(r.json())
            return body if body["recent_events"] else None

        everything = await wait_for(event_listed, message="the device event on the home overview")
    assert everything["devices"]["total"] == 3 and everything["devices"]["online"] == 1
    assert everything["alerts"]["active"] == 2
    assert everything["recent_events"][0]["device_id"] == "h-a1"
    assert everything["recent_events"][0]["data"] == {"action": "door_opened"}
    links = everything["links"]
    assert links["broker"]["connected"] is True
    assert links["cloud"]["state"] == "disabled" and links["ble"]["state"] == "disabled"

    # A member of station A sees A only, and asking for B is a 404 as if B did not exist.
    alice = await station.user_headers("alice", "member")
    mine = (await station.client.get("/api/v1/status/home", headers=alice)).json()
    assert mine["devices"]["total"] == 2
    assert mine["alerts"]["active"] == 1 and mine["alerts"]["items"][0]["message"] == "A is warm"
    r = await station.client.get("/api/v1/status/home", headers=alice, params={"station_id": b})
    assert r.status_code == 404 and r.json()["code"] == "STATION_NOT_FOUND"
    only_b = (await station.client.get("/api/v1/status/home", headers=owner, params={"station_id": b})).json()
    assert only_b["devices"]["total"] == 1 and only_b["recent_events"] == []
    assert (await station.client.get("/api/v1/status/home")).status_code == 401


async def test_system_status_reports_host_storage_ingest_and_backlogs(station: StationHandle) -> None:
    owner = await station.owner_headers()
    items = [{"channel": "device:sys-1/temperature", "value": float(i)} for i in range(20)]
    await station.create_device("sys-1", "climate")
    r = await station.client.post("/api/v1/datapoints/batch", headers=owner, json={"items": items})
    assert r.status_code == 200, r.text
    r = await station.client.get("/api/v1/status/system", headers=owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] and body["uptime_seconds"] >= 0
    assert 0 <= body["cpu"]["percent"] <= 100 * body["cpu"]["count"]
    assert body["memory"]["process_rss_bytes"] > 10_000_000
    assert body["disk"]["total_bytes"] > body["disk"]["free_bytes"] > 0
    assert body["database"]["size_bytes"] > 0
    assert body["database"]["kind"] in ("sqlite", "postgresql")
    assert body["ingest"]["committed_rows"] >= 20 and body["ingest"]["queue_rows"] >= 0
    assert body["ingest"]["rows_per_second"] > 0  # 20 rows since the sampler's first look at start-up
    assert set(body["backlogs"]) == {"broker_outbox", "deliveries_pending", "deliveries_dead_letter"}
    # Installation-wide: a station member (and a station admin) may not read it.
    alice = await station.user_headers("alice", "member")
    r = await station.client.get("/api/v1/status/system", headers=alice)
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"


async def test_workspace_gathers_a_device_page_in_one_call(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("ws-1", "climate")
    async with DeviceClient(station.mqtt_port, station.station_id, "ws-1") as dev:
        await dev.publish("handshake", {"type": "climate", "firmwareVersion": "2.1.0"})
        await dev.publish("state", {"state": {"temperature": 21.5, "humidity": 40}})
        await dev.publish("event", {"event": "user_event", "data": {"button": "a"}})
        r = await station.client.post(
            "/api/v1/devices/ws-1/commands", headers=owner, json={"action": "reboot"}
        )
        assert r.status_code == 202, r.text
        request_id = r.json()["request_id"]

        async def complete() -> dict[str, Any] | None:
            r = await station.client.get("/api/v1/devices/ws-1/workspace", headers=owner)
            assert r.status_code == 200, r.text
            body = dict(r.json())
            return body if len(body["latest"]) == 2 and body["recent_events"] else None

        body = await wait_for(complete, message="workspace with readings and an event")
    assert body["device"]["id"] == "ws-1" and body["device"]["firmware_version"] == "2.1.0"
    latest = {item["key"]: item for item in body["latest"]}
    assert latest["temperature"]["value"] == 21.5 and latest["temperature"]["unit"] == "°C"
    assert latest["humidity"]["value"] == 40
    assert any(ev["data"] == {"button": "a"} for ev in body["recent_events"])
    assert [c["request_id"] for c in body["pending_commands"]] == [request_id]  # sent, never acked
    assert body["ota"] is None
    assert "token_hash" not in str(body) and "password" not in str(body)
    # Another station's member: 404, as for the device itself.
    b = await _second_station(station)
    await station.create_device("ws-b", "climate", station_id=b)
    alice = await station.user_headers("alice", "member")
    r = await station.client.get("/api/v1/devices/ws-b/workspace", headers=alice)
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"


async def test_workspace_shows_a_newer_reading_stored_by_another_worker(station: StationHandle) -> None:
    """With several workers, this process's latest-value cache can lag the row another worker wrote."""
    owner = await station.owner_headers()
    await station.create_device("ws-2", "climate")
    channel = "device:ws-2/temperature"
    async with DeviceClient(station.mqtt_port, station.station_id, "ws-2") as dev:
        await dev.publish("state", {"state": {"temperature": 20.0}})
        assert station.ctx.ingest is not None
        ingest = station.ctx.ingest
        await wait_for(lambda: channel in ingest.latest, message="the reading in this process's cache")
    ts_us, _ = ingest.latest[channel]
    # What another worker's ingest does: a newer reading straight into the channel row.
    async with station.ctx.db.session() as session:
        await session.execute(
            update(Channel).where(Channel.id == channel).values(last_ts=ts_us + 1_000_000, last_value=25.5)
        )
    r = await station.client.get("/api/v1/devices/ws-2/workspace", headers=owner)
    latest = {item["key"]: item for item in r.json()["latest"]}
    assert latest["temperature"]["value"] == 25.5
    # And the cache still wins when it is the newer one.
    async with station.ctx.db.session() as session:
        await session.execute(
            update(Channel).where(Channel.id == channel).values(last_ts=ts_us - 1_000_000, last_value=1.0)
        )
    r = await station.client.get("/api/v1/devices/ws-2/workspace", headers=owner)
    assert {i["key"]: i["value"] for i in r.json()["latest"]}["temperature"] == 20.0


async def test_system_status_events_flow_only_while_someone_listens(settings_factory: Any) -> None:
    async with start_station(settings_factory(system_status_interval_seconds=0.2)) as station:
        sampler = station.ctx.status_sampler
        assert sampler is not None
        await asyncio.sleep(0.6)
        assert sampler.published == 0  # nobody listens: nothing built
        # A station member's stream cannot carry installation-wide events: it does not count either.
        alice = await station.user_headers("alice", "member")
        member_events: list[dict[str, Any]] = []
        member = asyncio.create_task(
            read_events(station.client, "/api/v1/events/stream?types=system.status", alice, member_events)
        )
        await asyncio.sleep(0.6)
        assert sampler.published == 0
        got: list[dict[str, Any]] = []
        owner = await station.owner_headers()
        reader = asyncio.create_task(
            read_events(station.client, "/api/v1/events/stream?types=system.status", owner, got)
        )
        try:
            await wait_for(lambda: len(got) >= 2, message="two system.status events")
            data = got[0]["data"]
            assert got[0]["event"] == "system.status"
            assert {"cpu", "memory", "ingest", "backlogs", "links"} <= set(data)
            assert "disk" not in data  # the brief form
            assert member_events == []
        finally:
            for task in (reader, member):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await wait_for(lambda: station.app.state.metrics.status_listeners == 0, message="listeners gone")
        published = sampler.published
        await asyncio.sleep(0.6)
        assert sampler.published == published


async def test_delivery_outcomes_and_backlogs_are_metrics(settings_factory: Any) -> None:
    receiver = HttpReceiver()
    await receiver.start()
    settings = settings_factory(
        system_status_interval_seconds=0.2,
        delivery_backoff_base_seconds=0.05,
        delivery_poll_seconds=0.05,
    )
    try:
        async with start_station(settings) as station:
            owner = await station.owner_headers()
            r = await station.client.post(
                "/api/v1/webhooks", headers=owner, json={"url": receiver.url, "event_types": ["device.*"]}
            )
            assert r.status_code == 201, r.text
            receiver.fail_next = 1
            await station.create_device("m-1", "climate")

            async def counted() -> str | None:
                text = (await station.client.get("/metrics")).text
                ok = 'waystation_deliveries_total{kind="webhook",outcome="succeeded"} 1.0' in text
                retried = 'waystation_deliveries_total{kind="webhook",outcome="retry"} 1.0' in text
                return text if ok and retried else None

            text = await wait_for(counted, message="delivery outcomes counted")
            assert "waystation_deliveries_pending " in text
            tasks = next(x for x in text.splitlines() if x.startswith("waystation_asyncio_tasks "))
            assert float(tasks.split()[1]) > 5  # the station's services are tasks
            assert "waystation_deliveries_dead_letter " in text
    finally:
        await receiver.stop()


async def test_home_shows_the_ble_bridge_and_the_cloud_link_state(settings_factory: Any) -> None:
    async with start_station(settings_factory(ble_simulate=True)) as station:
        owner = await station.owner_headers()

        async def bridge_running() -> dict[str, Any] | None:
            body = (await station.client.get("/api/v1/status/home", headers=owner)).json()
            return body if body["links"]["ble"]["state"] == "running" else None

        body = await wait_for(bridge_running, timeout=20, message="the simulated BLE bridge running")
        assert body["links"]["ble"]["scanning"] is False and body["links"]["ble"]["clients"] == 0
        assert body["links"]["cloud"]["state"] == "disabled"
        r = await station.client.get("/api/v1/provisioning/status", headers=owner)
        assert r.status_code == 200 and r.json()["simulated"] is True, r.text
        member = await station.user_headers("mia", "member")
        r = await station.client.get("/api/v1/provisioning/status", headers=member)
        assert r.status_code == 403
