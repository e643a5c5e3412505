"""Device types and device CRUD over HTTP (PROTOCOLS §12)."""

from __future__ import annotations

from tests.helpers import StationHandle


async def test_device_types_are_seeded_with_commands(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/device-types", headers=await station.owner_headers())
    types = {t["id"]: t for t in r.json()["items"]}
    assert set(types) >= {"climate", "pir", "switch-pir", "light", "sensor"}
    light = types["light"]
    assert {"set_brightness", "set_power", "reboot", "factory_reset", "ota_update"} <= set(light["commands"])
    assert light["commands"]["set_brightness"]["properties"]["brightness"]["maximum"] == 100


async def test_station_endpoint_shows_the_default_station(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/station", headers=await station.owner_headers())
    assert r.status_code == 200
    assert r.json()["id"] == station.station_id and r.json()["is_default"] is True


async def test_create_get_update_delete_device(station: StationHandle) -> None:
    headers = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/devices", headers=headers, json={"type": "climate", "name": "Kitchen"}
    )
    assert r.status_code == 201
    device = r.json()
    assert device["id"].startswith("climate-") and device["status"] == "unknown"
    assert device["station_id"] == station.station_id and device["state"] == {}
    device_id = device["id"]

    r = await station.client.patch(
        f"/api/v1/devices/{device_id}", headers=headers, json={"zone": "ground floor"}
    )
    assert r.status_code == 200 and r.json()["zone"] == "ground floor" and r.json()["name"] == "Kitchen"

    r = await station.client.get("/api/v1/devices", headers=headers)
    assert [d["id"] for d in r.json()["items"]] == [device_id]

    assert (await station.client.delete(f"/api/v1/devices/{device_id}", headers=headers)).status_code == 204
    r = await station.client.get(f"/api/v1/devices/{device_id}", headers=headers)
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"


async def test_list_filters_and_cursor_paging(station: StationHandle) -> None:
    headers = await station.owner_headers()
    for i in range(5):
        await station.create_device(f"pg-{i}", "light" if i % 2 else "climate")
    r = await station.client.get("/api/v1/devices", headers=headers, params={"limit": 2})
    page1 = r.json()
    assert [d["id"] for d in page1["items"]] == ["pg-0", "pg-1"]
    r = await station.client.get(
        "/api/v1/devices", headers=headers, params={"limit": 2, "cursor": page1["next_cursor"]}
    )
    assert [d["id"] for d in r.json()["items"]] == ["pg-2", "pg-3"]
    r = await station.client.get("/api/v1/devices", headers=headers, params={"type": "light"})
    assert [d["id"] for d in r.json()["items"]] == ["pg-1", "pg-3"]
    for bad in ("!!bad", "!!!", "abc"):
        r = await station.client.get("/api/v1/devices", headers=headers, params={"cursor": bad})
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", bad


async def test_bad_device_input_gets_clear_errors_and_changes_nothing(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("dup-1", "climate", name="Original")
    cases = [
        ({"id": "dup-1", "type": "climate"}, 409, "DEVICE_EXISTS"),
        ({"type": "toaster"}, 422, "DEVICE_TYPE_UNKNOWN"),
        ({"id": "bad/id", "type": "climate"}, 422, "VALIDATION_FAILED"),
        ({"id": "a+b", "type": "climate"}, 422, "VALIDATION_FAILED"),
        ({"type": "climate", "surprise": 1}, 422, "VALIDATION_FAILED"),
        ({"type": "climate", "station_id": "nope"}, 404, "STATION_NOT_FOUND"),
    ]
    for body, status, code in cases:
        r = await station.client.post("/api/v1/devices", headers=headers, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    device = await station.device("dup-1")
    assert device["name"] == "Original"
    r = await station.client.get("/api/v1/devices", headers=headers)
    assert len(r.json()["items"]) == 1


async def test_commands_are_validated_against_the_device_type(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("val-1", "light")
    cases = [
        ({"action": "set_brightness", "brightness": 101}, "COMMAND_INVALID"),
        ({"action": "set_brightness", "brightness": "75"}, "COMMAND_INVALID"),
        ({"action": "set_brightness"}, "COMMAND_INVALID"),
        ({"action": "set_brightness", "brightness": 5, "extra": 1}, "COMMAND_INVALID"),
        ({"action": "launch_rocket"}, "COMMAND_UNKNOWN"),
        (
            {"action": "ota_update", "url": "http://x/fw.bin", "sha256": "abc", "version": "2"},
            "COMMAND_INVALID",
        ),
        ({"brightness": 5}, "VALIDATION_FAILED"),
    ]
    for body, code in cases:
        r = await station.client.post("/api/v1/devices/val-1/commands", headers=headers, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["code"] == code, (body, r.text)
    r = await station.client.get("/api/v1/devices/val-1/commands", headers=headers)
    assert r.json()["items"] == []
    r = await station.client.post("/api/v1/devices/nope/commands", headers=headers, json={"action": "reboot"})
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"


async def test_deleted_device_is_forgotten_by_the_mqtt_side(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("gone-1", "climate")
    assert "gone-1" in station.ctx.devices.known
    await station.client.delete("/api/v1/devices/gone-1", headers=headers)
    assert "gone-1" not in station.ctx.devices.known
