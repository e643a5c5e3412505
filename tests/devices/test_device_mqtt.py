"""Devices over real MQTT (PROTOCOLS §2): handshake, state, events, presence, commands, bad input."""

from __future__ import annotations

import asyncio

from tests.helpers import DeviceClient, StationHandle, wait_for


async def test_known_device_handshake_is_acknowledged_and_recorded(station: StationHandle) -> None:
    await station.create_device("hs-1", "climate")
    async with DeviceClient(station.mqtt_port, station.station_id, "hs-1") as dev:
        await dev.publish("handshake", {"type": "climate", "firmwareVersion": "1.4.2", "chip": "esp32"})
        await wait_for(lambda: dev.messages("handshake/ack"), message="handshake ack")
        assert dev.messages("handshake/ack")[0] == {"status": "ok"}

        async def recorded() -> bool:
            d = await station.device("hs-1")
            return d["firmware_version"] == "1.4.2" and d["chip"] == "esp32" and d["status"] == "online"

        await wait_for(recorded, message="firmware recorded")


async def test_unknown_device_handshake_gets_unknown_device(station: StationHandle) -> None:
    async with DeviceClient(station.mqtt_port, station.station_id, "ghost-1") as dev:
        await dev.publish("handshake", {"type": "climate", "firmwareVersion": "1.0.0"})
        await wait_for(lambda: dev.messages("handshake/ack"), message="handshake ack")
        assert dev.messages("handshake/ack")[0] == {"status": "unknown_device"}
    assert station.app.state.metrics.rejected.get("unknown_device", 0) >= 1


async def test_handshake_on_another_stations_topic_is_unknown(station: StationHandle) -> None:
    await station.create_device("hs-2", "climate")
    async with DeviceClient(station.mqtt_port, "otherstation", "hs-2") as dev:
        await dev.publish("handshake", {"type": "climate"})
        await wait_for(lambda: dev.messages("handshake/ack"), message="handshake ack")
        assert dev.messages("handshake/ack")[0] == {"status": "unknown_device"}


async def test_state_messages_merge_into_device_state(station: StationHandle) -> None:
    await station.create_device("st-1", "climate")
    async with DeviceClient(station.mqtt_port, station.station_id, "st-1") as dev:
        await dev.publish("state", {"state": {"temperature": 22.5, "humidity": 41}})
        await dev.publish("state", {"state": {"temperature": 23.0}, "ts": "2026-11-22T10:00:00Z"})

        async def merged() -> dict:
            d = await station.device("st-1")
            return d if d["state"] == {"temperature": 23.0, "humidity": 41} else {}

        device = await wait_for(merged, message="merged state")
        assert device["status"] == "online"
        assert device["last_seen"] is not None


async def test_events_are_stored_and_listed_newest_first(station: StationHandle) -> None:
    await station.create_device("ev-1", "pir")
    headers = await station.owner_headers()
    async with DeviceClient(station.mqtt_port, station.station_id, "ev-1") as dev:
        await dev.publish("event", {"event": "device_event", "data": {"action": "motion_detected"}})
        await dev.publish("event", {"event": "user_event", "data": {"button": 1}})

        async def listed() -> list:
            r = await station.client.get("/api/v1/devices/ev-1/events", headers=headers)
            return r.json()["items"] if len(r.json()["items"]) == 2 else []

        items = await wait_for(listed, message="two events")
    assert [i["kind"] for i in items] == ["user_event", "device_event"]
    assert items[1]["data"] == {"action": "motion_detected"}


async def test_heartbeat_brings_online_and_will_takes_offline(station: StationHandle) -> None:
    await station.create_device("pr-1", "light")
    dev = DeviceClient(station.mqtt_port, station.station_id, "pr-1")
    await dev.__aenter__()
    await dev.publish("heartbeat", {"status": "online"})
    await wait_for(lambda: _status(station, "pr-1", "online"), message="online")
    await dev.drop_connection()  # the broker publishes the will {"status":"offline"} after keepalive
    await wait_for(lambda: _status(station, "pr-1", "offline"), timeout=20, message="offline by will")
    await dev.__aexit__(None, None, None)


async def test_silence_longer_than_timeout_makes_device_offline(settings_factory) -> None:
    from tests.helpers import start_station

    async with start_station(settings_factory(heartbeat_timeout_seconds=1.0)) as station:
        await station.create_device("pr-2", "sensor")
        async with DeviceClient(station.mqtt_port, station.station_id, "pr-2") as dev:
            await dev.publish("heartbeat", {"status": "online"})
            await wait_for(lambda: _status(station, "pr-2", "online"), message="online")
            await wait_for(
                lambda: _status(station, "pr-2", "offline"), timeout=5, message="offline by silence"
            )
            d = await station.device("pr-2")
            assert d["last_seen"] is not None


async def _status(station: StationHandle, device_id: str, status: str) -> bool:
    return (await station.device(device_id))["status"] == status


async def test_command_is_published_and_tracked_to_applied(station: StationHandle) -> None:
    await station.create_device("cmd-1", "light")
    headers = await station.owner_headers()
    async with DeviceClient(station.mqtt_port, station.station_id, "cmd-1") as dev:
        await dev.publish("heartbeat", {"status": "online"})
        await wait_for(lambda: _status(station, "cmd-1", "online"), message="online")
        r = await station.client.post(
            "/api/v1/devices/cmd-1/commands",
            headers=headers,
            json={"action": "set_brightness", "brightness": 75},
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "sent"
        request_id = body["request_id"]
        commands = await wait_for(lambda: dev.messages("command"), message="command delivered")
        assert commands[0] == {"request_id": request_id, "action": "set_brightness", "brightness": 75}

        await dev.publish("command/ack", {"request_id": request_id, "status": "accepted"})
        await wait_for(lambda: _command_status(station, "cmd-1", request_id, "accepted"), message="accepted")
        await dev.publish("command/ack", {"request_id": request_id, "status": "applied"})
        await wait_for(lambda: _command_status(station, "cmd-1", request_id, "applied"), message="applied")
        # A late duplicate 'accepted' never moves an applied command backwards.
        await dev.publish("command/ack", {"request_id": request_id, "status": "accepted"})
        await asyncio.sleep(0.3)
        assert await _command_status(station, "cmd-1", request_id, "applied")


async def test_failed_ack_records_the_error(station: StationHandle) -> None:
    await station.create_device("cmd-2", "light")
    headers = await station.owner_headers()
    async with DeviceClient(station.mqtt_port, station.station_id, "cmd-2") as dev:
        await dev.publish("heartbeat", {"status": "online"})
        await wait_for(lambda: _status(station, "cmd-2", "online"), message="online")
        r = await station.client.post(
            "/api/v1/devices/cmd-2/commands", headers=headers, json={"action": "reboot"}
        )
        request_id = r.json()["request_id"]
        await wait_for(lambda: dev.messages("command"), message="command delivered")
        await dev.publish("command/ack", {"request_id": request_id, "status": "failed", "error": "busy"})
        await wait_for(lambda: _command_status(station, "cmd-2", request_id, "failed"), message="failed")
        r = await station.client.get(f"/api/v1/devices/cmd-2/commands/{request_id}", headers=headers)
        assert r.json()["error"] == "busy"


async def _command_status(station: StationHandle, device_id: str, request_id: str, status: str) -> bool:
    headers = await station.owner_headers()
    r = await station.client.get(f"/api/v1/devices/{device_id}/commands/{request_id}", headers=headers)
    return r.json()["status"] == status


async def test_command_to_offline_device_waits_and_goes_out_when_it_returns(station: StationHandle) -> None:
    await station.create_device("cmd-3", "light")
    headers = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/devices/cmd-3/commands", headers=headers, json={"action": "set_power", "on": True}
    )
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    request_id = r.json()["request_id"]
    async with DeviceClient(station.mqtt_port, station.station_id, "cmd-3") as dev:
        await dev.publish("handshake", {"type": "light", "firmwareVersion": "2.0.0"})
        commands = await wait_for(lambda: dev.messages("command"), message="queued command delivered")
        assert commands[0]["request_id"] == request_id
        await wait_for(lambda: _command_status(station, "cmd-3", request_id, "sent"), message="sent")


async def test_unanswered_command_times_out(settings_factory) -> None:
    from tests.helpers import start_station

    async with start_station(settings_factory(command_ack_timeout_seconds=0.5)) as station:
        await station.create_device("cmd-4", "light")
        headers = await station.owner_headers()
        async with DeviceClient(station.mqtt_port, station.station_id, "cmd-4") as dev:
            await dev.publish("heartbeat", {"status": "online"})
            await wait_for(lambda: _status(station, "cmd-4", "online"), message="online")
            r = await station.client.post(
                "/api/v1/devices/cmd-4/commands", headers=headers, json={"action": "reboot"}
            )
            request_id = r.json()["request_id"]
            await wait_for(
                lambda: _command_status(station, "cmd-4", request_id, "timeout"), timeout=5, message="timeout"
            )


async def test_queued_command_expires_after_its_ttl(settings_factory) -> None:
    from tests.helpers import start_station

    async with start_station(settings_factory(command_ttl_seconds=0.3)) as station:
        await station.create_device("cmd-5", "light")
        headers = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/devices/cmd-5/commands", headers=headers, json={"action": "reboot"}
        )
        request_id = r.json()["request_id"]
        await wait_for(
            lambda: _command_status(station, "cmd-5", request_id, "timeout"), timeout=5, message="expired"
        )


async def test_bad_messages_are_counted_dropped_and_never_stop_processing(station: StationHandle) -> None:
    await station.create_device("bad-1", "climate")
    headers = await station.owner_headers()
    big = b'{"state":{"x":"' + b"a" * (70 * 1024) + b'"}}'
    async with DeviceClient(station.mqtt_port, station.station_id, "bad-1") as dev:
        await dev.publish("state", b"{not json")
        await dev.publish("state", b"[1,2,3]")
        await dev.publish("state", {"state": "warm"})
        await dev.publish("state", {"state": {"t": 1}, "ts": "yesterday"})
        await dev.publish("event", {"event": "explosion"})
        await dev.publish("command/ack", {"request_id": 5, "status": "applied"})
        await dev.publish("heartbeat", {"status": "sleepy"})
        await dev.publish("state", big)
        await dev.publish("firmware", {"x": 1})
        await dev.publish("state", b"\xff\xfe\x00")
        await dev.publish_raw(f"station/{station.station_id}/nonsense", b"{}")
        # ...and the next good message is processed as usual.
        await dev.publish("state", {"state": {"temperature": 19.5}})

        async def good_state() -> bool:
            return (await station.device("bad-1"))["state"] == {"temperature": 19.5}

        await wait_for(good_state, message="good state after bad ones")

    r = await station.client.get("/api/v1/status/ingest", headers=headers)
    rejected = r.json()["rejected"]
    assert rejected["invalid_json"] >= 2
    assert rejected["not_an_object"] >= 1
    assert rejected["invalid_fields"] >= 5
    assert rejected["payload_too_large"] >= 1
    assert rejected["unknown_topic"] >= 2
    assert r.json()["mqtt"]["handler_errors"] == 0
    metrics = (await station.client.get("/metrics")).text
    assert 'waystation_mqtt_rejected_total{reason="invalid_json"}' in metrics


async def test_device_registered_by_another_process_is_found_without_restart(station: StationHandle) -> None:
    from waystation.simulator.fleet import FleetMember, register_fleet

    # Written straight to the database, as `waystation simulate` (or another worker) does.
    await register_fleet(station.ctx.db, station.station_id, [FleetMember("late-1", "climate", "Late")])
    assert "late-1" not in station.ctx.devices.known
    async with DeviceClient(station.mqtt_port, station.station_id, "late-1") as dev:
        await dev.publish("handshake", {"type": "climate", "firmwareVersion": "1.0.0"})
        await wait_for(lambda: dev.messages("handshake/ack"), message="handshake ack")
        assert dev.messages("handshake/ack")[0] == {"status": "ok"}
        await wait_for(lambda: _status(station, "late-1", "online"), message="online")
