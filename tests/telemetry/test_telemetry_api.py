"""Telemetry over real MQTT and HTTP: channels, raw and bucketed queries, idempotency, experiments."""

from __future__ import annotations

import asyncio
import csv
import io

from tests.helpers import DeviceClient, StationHandle, wait_for


async def _rows(station: StationHandle, channel: str, **params: str) -> list[dict]:
    r = await station.client.get(
        "/api/v1/datapoints",
        headers=await station.owner_headers(),
        params={"channel": channel, "from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z", **params},
    )
    if r.status_code == 404:
        return []  # the channel appears with its first committed batch
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_numeric_state_keys_become_channels_with_datapoints(station: StationHandle) -> None:
    await station.create_device("tm-1", "climate")
    headers = await station.owner_headers()
    async with DeviceClient(station.mqtt_port, station.station_id, "tm-1") as dev:
        await dev.publish(
            "state",
            {
                "state": {"temperature": 21.5, "humidity": 40, "on": True, "mode": "eco"},
                "ts": "2026-11-22T10:00:00Z",
            },
        )
        await dev.publish("state", {"state": {"temperature": 22.0}, "ts": "2026-11-22T10:00:30Z"})

        async def two_points() -> list:
            rows = await _rows(station, "device:tm-1/temperature")
            return rows if len(rows) == 2 else []

        rows = await wait_for(two_points, message="two temperature points")
    assert [r["value"] for r in rows] == [21.5, 22.0]
    assert rows[0]["ts"].startswith("2026-11-22T10:00:00")
    r = await station.client.get("/api/v1/channels", headers=headers, params={"device_id": "tm-1"})
    channels = {c["id"]: c for c in r.json()["items"]}
    # Booleans and strings are state, not telemetry.
    assert set(channels) == {"device:tm-1/temperature", "device:tm-1/humidity"}
    assert channels["device:tm-1/temperature"]["unit"] == "°C"
    assert channels["device:tm-1/temperature"]["last_value"] == 22.0
    r = await station.client.get("/api/v1/datapoints/latest", headers=headers, params={"device_id": "tm-1"})
    assert {i["channel"]: i["value"] for i in r.json()["items"]} == {
        "device:tm-1/humidity": 40.0,
        "device:tm-1/temperature": 22.0,
    }


async def test_a_redelivered_message_with_ts_is_stored_once(station: StationHandle) -> None:
    await station.create_device("tm-2", "sensor")
    async with DeviceClient(station.mqtt_port, station.station_id, "tm-2") as dev:
        for _ in range(3):
            await dev.publish("state", {"state": {"value": 7.5}, "ts": 1795000000123})
        await dev.publish("state", {"state": {"value": 8.5}, "ts": 1795000000124})
        await wait_for(lambda: _rows(station, "device:tm-2/value"), message="rows")
        await asyncio.sleep(0.3)
    rows = await _rows(station, "device:tm-2/value")
    assert [r["value"] for r in rows] == [7.5, 8.5]
    assert station.ctx.ingest.duplicate_rows >= 2


async def test_messages_without_ts_in_the_same_instant_are_all_kept(station: StationHandle) -> None:
    await station.create_device("tm-3", "sensor")
    async with DeviceClient(station.mqtt_port, station.station_id, "tm-3") as dev:
        for i in range(50):
            await dev.publish("state", {"state": {"value": i}})

        async def fifty() -> bool:
            return len(await _rows(station, "device:tm-3/value", limit="1000")) == 50

        await wait_for(fifty, message="50 rows")


async def test_raw_paging_and_buckets_from_rollups(station: StationHandle) -> None:
    await station.create_device("tm-4", "sensor")
    headers = await station.owner_headers()
    # 3 minutes x 4 points, posted through the HTTP batch API with explicit times.
    items = [
        {
            "channel": "device:tm-4/value",
            "value": float(m * 10 + s),
            "ts": f"2026-11-22T10:0{m}:{s * 10:02d}Z",
        }
        for m in range(3)
        for s in range(4)
    ]
    r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 12, "stored": 12, "duplicates": 0}
    params = {"channel": "device:tm-4/value", "from": "2026-11-22T09:00:00Z", "to": "2026-11-22T11:00:00Z"}
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "limit": 5})
    page = r.json()
    assert len(page["items"]) == 5 and page["next_cursor"]
    seen = [p["value"] for p in page["items"]]
    while page["next_cursor"]:
        page = (
            await station.client.get(
                "/api/v1/datapoints",
                headers=headers,
                params={**params, "limit": 5, "cursor": page["next_cursor"]},
            )
        ).json()
        seen += [p["value"] for p in page["items"]]
    assert seen == [i["value"] for i in items]

    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "bucket": "1m"})
    buckets = r.json()["items"]
    assert [(b["min"], b["max"], b["count"]) for b in buckets] == [(0, 3, 4), (10, 13, 4), (20, 23, 4)]
    assert buckets[1]["avg"] == 11.5 and buckets[1]["ts"].startswith("2026-11-22T10:01:00")
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "bucket": "1h"})
    assert [(b["min"], b["max"], b["count"]) for b in r.json()["items"]] == [(0, 23, 12)]
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "bucket": "1d"})
    assert r.json()["items"][0]["count"] == 12 and r.json()["items"][0]["ts"].startswith("2026-11-22T00:00")
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "bucket": "auto"})
    assert r.json()["bucket_seconds"] == 60

    # Re-posting the same items stores nothing new and leaves the rollups alone.
    r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": items})
    assert r.json() == {"received": 12, "stored": 0, "duplicates": 12}
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "bucket": "1h"})
    assert r.json()["items"][0]["count"] == 12


async def test_query_errors_are_clear(station: StationHandle) -> None:
    headers = await station.owner_headers()
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={"channel": "device:nope/x"})
    assert r.status_code == 404 and r.json()["code"] == "CHANNEL_NOT_FOUND"
    await station.client.post(
        "/api/v1/datapoints/batch",
        headers=headers,
        json={"items": [{"channel": "flow:lab/t", "value": 1}]},
    )
    r = await station.client.get(
        "/api/v1/datapoints",
        headers=headers,
        params={"channel": "flow:lab/t", "from": "2026-11-22T10:00:00Z", "to": "2026-11-22T09:00:00Z"},
    )
    assert r.status_code == 422 and r.json()["code"] == "INVALID_TIME_RANGE"
    r = await station.client.get(
        "/api/v1/datapoints",
        headers=headers,
        params={"channel": "flow:lab/t", "bucket": "1m", "from": "2016-01-01T00:00:00Z"},
    )
    assert r.status_code == 422 and r.json()["code"] == "INVALID_TIME_RANGE"
    r = await station.client.get(
        "/api/v1/datapoints", headers=headers, params={"channel": "flow:lab/t", "cursor": "garbage"}
    )
    assert r.status_code == 400


async def test_http_batch_validation(station: StationHandle) -> None:
    headers = await station.owner_headers()
    too_many = [{"channel": "flow:c/x", "value": i} for i in range(501)]
    r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": too_many})
    assert r.status_code == 422
    for bad in (
        {"channel": "weird", "value": 1},
        {"channel": "flow:c/x", "value": "NaN"},
        {"channel": "flow:c/x", "value": True},
    ):
        r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": [bad]})
        assert r.status_code == 422, bad
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=headers,
        json={"items": [{"channel": "device:ghost/x", "value": 1}]},
    )
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"
    viewer = await station.user_headers("vic", "viewer")
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=viewer,
        json={"items": [{"channel": "flow:c/x", "value": 1}]},
    )
    assert r.status_code == 403


async def test_experiment_tags_datapoints_and_exports_csv(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("ex-1", "climate")
    r = await station.client.post("/api/v1/experiments", headers=headers, json={"name": "Run 1"})
    assert r.status_code == 201
    exp = r.json()
    assert exp["running"] is True
    r = await station.client.post("/api/v1/experiments", headers=headers, json={"name": "Run 2"})
    assert r.status_code == 409 and r.json()["code"] == "EXPERIMENT_RUNNING"
    async with DeviceClient(station.mqtt_port, station.station_id, "ex-1") as dev:
        for i in range(5):
            await dev.publish("state", {"state": {"temperature": 20 + i, "humidity": 50}})

        async def tagged() -> bool:
            return len(await _rows(station, "device:ex-1/temperature")) == 5

        await wait_for(tagged, message="5 points")
    r = await station.client.post(f"/api/v1/experiments/{exp['id']}/stop", headers=headers)
    assert r.status_code == 200 and r.json()["running"] is False
    r = await station.client.post(f"/api/v1/experiments/{exp['id']}/stop", headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "EXPERIMENT_STOPPED"
    # After the stop, new points are not part of the experiment.
    await station.client.post(
        "/api/v1/datapoints/batch",
        headers=headers,
        json={"items": [{"channel": "device:ex-1/temperature", "value": 99}]},
    )
    r = await station.client.get(f"/api/v1/experiments/{exp['id']}/export.csv", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 10
    assert {row["channel"] for row in rows} == {"device:ex-1/temperature", "device:ex-1/humidity"}
    assert sorted(float(row["value"]) for row in rows if row["channel"].endswith("temperature")) == [
        20,
        21,
        22,
        23,
        24,
    ]
    r = await station.client.get("/api/v1/experiments/999/export.csv", headers=headers)
    assert r.status_code == 404 and r.json()["code"] == "EXPERIMENT_NOT_FOUND"


async def test_deleting_a_device_removes_its_telemetry(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("del-1", "sensor")
    await station.client.post(
        "/api/v1/datapoints/batch",
        headers=headers,
        json={"items": [{"channel": "device:del-1/value", "value": 1}]},
    )
    await station.client.delete("/api/v1/devices/del-1", headers=headers)
    r = await station.client.get("/api/v1/channels", headers=headers, params={"device_id": "del-1"})
    assert r.json()["items"] == []
