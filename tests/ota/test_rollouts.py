"""Rollouts end to end: simulated devices on a real Mosquitto download signed links over real HTTP, check
the SHA-256, report progress, reboot and handshake with the new version; the driver batches, pauses on
failures, cancels, times out silent devices and carries on after a station restart."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.helpers import DeviceClient, StationHandle, start_station, wait_for
from tests.ota.support import (
    FAST,
    image,
    job,
    job_where,
    log_in_again,
    online,
    running,
    sim,
    states,
    uploaded,
)
from tests.realtime.test_sse import read_events
from waystation.simulator.device import FIRMWARE_VERSION


async def _create_job(station: StationHandle, **body: Any) -> dict[str, Any]:
    r = await station.client.post("/api/v1/ota/jobs", headers=await station.owner_headers(), json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _sequences(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each device's states in the order the SSE stream announced them (repeats with new progress folded)."""
    seen: dict[str, list[str]] = {}
    for ev in events:
        data = ev["data"]
        if ev["event"] != "ota.progress" or data["device_id"] is None:
            continue
        trail = seen.setdefault(data["device_id"], [])
        if not trail or trail[-1] != data["state"]:
            trail.append(data["state"])
    return seen


async def test_rollout_in_batches_goes_through_every_state(settings_factory: Any) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        owner = await station.owner_headers()
        ids = [f"ota-{i}" for i in range(4)]
        for device_id in ids:
            await station.create_device(device_id, "climate")
        devices = [sim(station, d) for d in ids]
        fw = await uploaded(station, image(120_000), version="2.0.0")
        events: list[dict[str, Any]] = []
        reader = asyncio.create_task(
            read_events(station.client, "/api/v1/events/stream?types=ota.progress", owner, events)
        )
        try:
            async with running(*devices):
                await online(station, *ids)
                created = await _create_job(
                    station, firmware_id=fw["id"], device_ids=ids, batch_size=2, failure_threshold=1
                )
                assert created["status"] == "running"
                assert [d["state"] for d in created["devices"]] == ["pending"] * 4
                assert [d["from_version"] for d in created["devices"]] == [FIRMWARE_VERSION] * 4
                done = await job_where(
                    station, created["id"], lambda j: j["status"] == "completed", "rollout completed", 30
                )
                await online(station, *ids, version="2.0.0")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

        assert done["counts"]["succeeded"] == 4 and done["current_batch"] == 2
        assert done["finished_at"] is not None and done["paused_reason"] is None
        by_id = {d["device_id"]: d for d in done["devices"]}
        assert [by_id[d]["batch"] for d in ids] == [1, 1, 2, 2]
        assert all(d["progress"] == 100 and d["error"] is None for d in done["devices"])
        assert all(d.ota_updates == 1 and d.firmware_version == "2.0.0" for d in devices)

        trails = _sequences(events)
        for device_id in ids:
            assert trails[device_id] == ["sent", "downloading", "applying", "succeeded"], trails
        # Batch 2 starts only once batch 1 is done.
        order = [(e["data"]["device_id"], e["data"]["state"]) for e in events if e["data"]["device_id"]]
        last_of_first = max(order.index((d, "succeeded")) for d in ids[:2])
        first_of_second = min(order.index((d, "sent")) for d in ids[2:])
        assert last_of_first < first_of_second
        progress = [
            e["data"]["progress"]
            for e in events
            if e["data"]["device_id"] == ids[0] and e["data"]["state"] == "downloading"
        ]
        assert progress == sorted(progress) and progress[-1] == 100
        assert events[-1]["data"]["job_status"] == "completed" and events[-1]["data"]["device_id"] is None

        listed = (await station.client.get("/api/v1/ota/jobs", headers=owner)).json()["items"]
        assert [(j["id"], j["status"]) for j in listed] == [(created["id"], "completed")]
        log = await station.client.get("/api/v1/log", headers=owner, params={"source": "ota"})
        messages = [e["message"] for e in log.json()["items"]]
        assert any("started" in m for m in messages) and any("finished" in m for m in messages)
        audit = await station.client.get("/api/v1/audit", headers=owner, params={"action": "ota.job_create"})
        assert len(audit.json()["items"]) == 1


async def test_bad_checksum_fails_devices_and_pauses_the_rollout(settings_factory: Any) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        owner = await station.owner_headers()
        ids = [f"bad-{i}" for i in range(4)]
        for device_id in ids:
            await station.create_device(device_id, "climate")
        devices = [sim(station, d) for d in ids]
        content = image(50_000)
        fw = await uploaded(station, content, version="3.0.0")
        stored = station.settings.data_dir / "firmware" / f"{fw['id']}.bin"
        stored.write_bytes(b"\x00" * len(content))  # the devices get other bytes than were uploaded
        async with running(*devices):
            await online(station, *ids)
            created = await _create_job(station, firmware_id=fw["id"], device_ids=ids, batch_size=2)
            paused = await job_where(
                station,
                created["id"],
                lambda j: j["status"] == "paused" and j["counts"]["failed"] == 2,
                "rollout paused after the first batch failed",
            )
            assert states(paused) == dict(zip(ids, ["failed", "failed", "pending", "pending"], strict=True))
            assert "batch 1" in paused["paused_reason"]
            failed = [d for d in paused["devices"] if d["state"] == "failed"]
            assert all("checksum mismatch" in d["error"] for d in failed)
            # Paused means paused: nothing more is sent.
            await asyncio.sleep(0.5)
            assert states(await job(station, created["id"])) == states(paused)
            assert all(d.ota_updates == 0 for d in devices)
            for device_id in ids:
                assert (await station.device(device_id))["firmware_version"] == FIRMWARE_VERSION

            # Fixed image, resumed rollout: the next batch goes out and succeeds.
            stored.write_bytes(content)
            r = await station.client.post(f"/api/v1/ota/jobs/{created['id']}/resume", headers=owner)
            assert r.status_code == 200 and r.json()["status"] == "running", r.text
            done = await job_where(station, created["id"], lambda j: j["status"] == "completed", "completed")
            assert states(done) == dict(zip(ids, ["failed", "failed", "succeeded", "succeeded"], strict=True))
            assert done["counts"]["failed"] == 2 and done["counts"]["succeeded"] == 2
            r = await station.client.post(f"/api/v1/ota/jobs/{created['id']}/resume", headers=owner)
            assert r.status_code == 409 and r.json()["code"] == "OTA_JOB_NOT_PAUSED"

        log = await station.client.get(
            "/api/v1/log", headers=owner, params={"source": "ota", "level": "warning"}
        )
        messages = [e["message"] for e in log.json()["items"]]
        assert any("paused" in m for m in messages)
        assert any("checksum mismatch" in m for m in messages)


async def test_cancel_leaves_pending_devices_alone_and_lets_in_flight_ones_finish(
    settings_factory: Any,
) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        owner = await station.owner_headers()
        ids = ["can-0", "can-1", "can-2"]
        for device_id in ids:
            await station.create_device(device_id, "climate")
        late, *others = [sim(station, d) for d in ids]
        fw = await uploaded(station, image(30_000), version="4.0.0")
        async with running(*others):
            await online(station, *ids[1:])
            # can-0 is offline: its command waits in the queue, so it stays in flight.
            created = await _create_job(station, firmware_id=fw["id"], device_ids=ids, batch_size=1)
            await job_where(station, created["id"], lambda j: j["devices"][0]["state"] == "sent", "sent")
            r = await station.client.post(f"/api/v1/ota/jobs/{created['id']}/cancel", headers=owner)
            assert r.status_code == 200, r.text
            cancelled = r.json()
            assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is None
            assert cancelled["counts"]["cancelled"] == 2 and cancelled["counts"]["sent"] == 1
            r = await station.client.post(f"/api/v1/ota/jobs/{created['id']}/cancel", headers=owner)
            assert r.status_code == 409 and r.json()["code"] == "OTA_JOB_FINISHED"

            async with running(late):  # the in-flight device shows up and finishes its update
                done = await job_where(
                    station, created["id"], lambda j: j["finished_at"] is not None, "in-flight device done"
                )
            assert done["status"] == "cancelled"
            assert states(done) == {"can-0": "succeeded", "can-1": "cancelled", "can-2": "cancelled"}
            assert late.firmware_version == "4.0.0"
            assert all(d.ota_updates == 0 for d in others)
            for device_id in ids[1:]:
                assert (await station.device(device_id))["firmware_version"] == FIRMWARE_VERSION
        audit = await station.client.get("/api/v1/audit", headers=owner, params={"action": "ota.job_cancel"})
        assert len(audit.json()["items"]) == 1


async def test_a_silent_device_times_out(settings_factory: Any) -> None:
    async with start_station(settings_factory(ota_device_timeout_seconds=1.0, **FAST)) as station:
        await station.create_device("mute-1", "climate")
        fw = await uploaded(station, image(10_000), version="5.0.0")
        async with DeviceClient(station.mqtt_port, station.station_id, "mute-1") as dev:
            await dev.publish("handshake", {"type": "climate", "firmwareVersion": "1.0.0"})
            await wait_for(lambda: dev.messages("handshake/ack"), message="handshake ack")
            created = await _create_job(station, firmware_id=fw["id"], device_ids=["mute-1"])
            command = await wait_for(lambda: dev.messages("command"), message="ota_update command")
            assert command[0]["action"] == "ota_update"
            assert command[0]["sha256"] == fw["sha256"] and command[0]["version"] == "5.0.0"
            assert "/api/v1/firmware/" in command[0]["url"] and "sig=" in command[0]["url"]
            done = await job_where(station, created["id"], lambda j: j["status"] == "completed", "timed out")
        [device] = done["devices"]
        assert device["state"] == "timed_out" and "within 1 s" in device["error"]
        assert done["counts"]["timed_out"] == 1


async def test_ota_failed_event_and_late_acks(settings_factory: Any) -> None:
    """A device may report failure with an `ota` event only; acks after a final state change nothing."""
    async with start_station(settings_factory(**FAST)) as station:
        await station.create_device("evt-1", "climate")
        fw = await uploaded(station, image(10_000), version="6.0.0")
        async with DeviceClient(station.mqtt_port, station.station_id, "evt-1") as dev:
            await dev.publish("handshake", {"type": "climate", "firmwareVersion": "1.0.0"})
            created = await _create_job(station, firmware_id=fw["id"], device_ids=["evt-1"])
            [command] = await wait_for(lambda: dev.messages("command"), message="ota_update command")
            await dev.publish("command/ack", {"request_id": command["request_id"], "status": "accepted"})
            await dev.publish("event", {"event": "ota", "data": {"state": "downloading", "progress": 40}})
            mid = await job_where(
                station, created["id"], lambda j: j["devices"][0]["progress"] == 40, "progress 40"
            )
            assert mid["devices"][0]["state"] == "downloading"
            await dev.publish("event", {"event": "ota", "data": {"state": "failed", "error": "flash full"}})
            done = await job_where(station, created["id"], lambda j: j["status"] == "completed", "done")
            assert done["devices"][0]["state"] == "failed" and done["devices"][0]["error"] == "flash full"
            await dev.publish("command/ack", {"request_id": command["request_id"], "status": "applied"})
            await dev.publish("handshake", {"type": "climate", "firmwareVersion": "6.0.0"})
            await asyncio.sleep(0.5)
            assert (await job(station, created["id"]))["devices"][0]["state"] == "failed"


async def test_rollout_rules(station: StationHandle) -> None:
    """Targets must fit the firmware, a device is in one rollout at a time, firmware in use stays, and
    other stations' rollouts do not exist for a station admin."""
    owner = await station.owner_headers()
    for device_id, type_id in [("r-1", "climate"), ("r-2", "climate"), ("r-light", "light")]:
        await station.create_device(device_id, type_id)
    fw = await uploaded(station, image(5_000), version="7.0.0")

    async def post(body: dict[str, Any], headers: dict[str, str] = owner) -> Any:
        return await station.client.post("/api/v1/ota/jobs", headers=headers, json=body)

    r = await post({"firmware_id": fw["id"], "device_ids": ["r-1", "r-light"]})
    assert r.status_code == 422 and r.json()["code"] == "OTA_TARGET_INVALID"
    r = await post({"firmware_id": fw["id"], "device_ids": ["r-1", "nope"]})
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"
    r = await post({"firmware_id": fw["id"]})
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"
    r = await post({"firmware_id": fw["id"], "all_devices": True, "failure_threshold": 1.5})
    assert r.status_code == 422
    r = await post({"firmware_id": fw["id"], "all_devices": True, "failure_threshold": 0.5, "batch_size": 5})
    assert r.status_code == 201, r.text
    first = r.json()
    assert sorted(d["device_id"] for d in first["devices"]) == ["r-1", "r-2"]
    assert first["failure_threshold"] == 0.5
    r = await post({"firmware_id": fw["id"], "device_ids": ["r-2"]})
    assert r.status_code == 409 and r.json()["code"] == "OTA_DEVICE_BUSY"
    r = await station.client.delete(f"/api/v1/firmware/{fw['id']}", headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "FIRMWARE_IN_USE"

    member = await station.user_headers("mo", "member")
    r = await post({"firmware_id": fw["id"], "device_ids": ["r-1"]}, member)
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    assert (await station.client.get("/api/v1/ota/jobs", headers=member)).status_code == 403

    b = (await station.client.post("/api/v1/stations", headers=owner, json={"name": "B"})).json()["id"]
    await station.user_headers("ada", "member")
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=owner, json={"username": "ada", "role": "admin"}
    )
    assert r.status_code == 201, r.text
    # Ada is an admin at B and nothing at the default station.
    r = await station.client.delete(f"/api/v1/stations/{station.station_id}/members/ada", headers=owner)
    assert r.status_code == 204, r.text
    ada = await station.user_headers("ada", "member")
    assert (await station.client.get("/api/v1/ota/jobs", headers=ada)).json()["items"] == []
    for method, path in [
        ("GET", f"/api/v1/ota/jobs/{first['id']}"),
        ("POST", f"/api/v1/ota/jobs/{first['id']}/cancel"),
        ("POST", f"/api/v1/ota/jobs/{first['id']}/resume"),
    ]:
        r = await station.client.request(method, path, headers=ada)
        assert r.status_code == 404 and r.json()["code"] == "OTA_JOB_NOT_FOUND", (method, path, r.text)
    r = await post({"firmware_id": fw["id"], "device_ids": ["r-1"]}, ada)
    assert r.status_code == 404 and r.json()["code"] == "FIRMWARE_NOT_FOUND"

    r = await station.client.post(f"/api/v1/ota/jobs/{first['id']}/cancel", headers=owner)
    assert r.status_code == 200
    # Cancelled: the firmware may go; the rollout keeps its history.
    assert (await station.client.delete(f"/api/v1/firmware/{fw['id']}", headers=owner)).status_code == 204
    kept = await job(station, first["id"])
    assert kept["firmware_id"] is None and kept["version"] == "7.0.0"


async def test_rollout_survives_a_station_restart(settings_factory: Any) -> None:
    settings = settings_factory(**FAST)
    ids = ["rs-0", "rs-1"]
    async with start_station(settings) as station:
        for device_id in ids:
            await station.create_device(device_id, "climate")
        early, late = sim(station, ids[0]), sim(station, ids[1])
        fw = await uploaded(station, image(20_000), version="8.0.0")
    async with running(early):
        async with start_station(settings) as station:
            await log_in_again(station)
            await online(station, ids[0])
            # rs-1 is offline: its command waits in the queue across the restart.
            created = await _create_job(station, firmware_id=fw["id"], device_ids=ids, batch_size=2)
            await job_where(
                station, created["id"], lambda j: states(j)[ids[0]] == "succeeded", "rs-0 updated"
            )
            assert states(await job(station, created["id"]))[ids[1]] == "sent"
        async with start_station(settings) as station, running(late):
            await log_in_again(station)
            done = await job_where(station, created["id"], lambda j: j["status"] == "completed", "completed")
            assert states(done) == {ids[0]: "succeeded", ids[1]: "succeeded"}
            await online(station, *ids, version="8.0.0")
