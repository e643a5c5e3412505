"""Retention purges in batches; live values reach WebSocket clients; back-pressure keeps memory bounded."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import websockets

from tests.helpers import DeviceClient, StationHandle, start_station, wait_for


async def test_retention_purges_old_raw_data_and_rollups(station: StationHandle) -> None:
    headers = await station.owner_headers()
    now = datetime.now(UTC)
    old = [
        {
            "channel": "flow:lab/t",
            "value": float(i),
            "ts": (now - timedelta(days=40, minutes=i)).isoformat(),
        }
        for i in range(30)
    ]
    fresh = [{"channel": "flow:lab/t", "value": 100.0, "ts": (now - timedelta(minutes=5)).isoformat()}]
    r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": old + fresh})
    assert r.json()["stored"] == 31
    station.ctx.retention.settings.retention_batch_rows = 7  # several small batches
    removed = await station.ctx.retention.purge_once()
    assert removed == {"raw": 30, "1m": 0, "1h": 0}  # rollups outlive raw data (180 days by default)
    params = {"channel": "flow:lab/t", "from": (now - timedelta(days=60)).isoformat()}
    r = await station.client.get("/api/v1/datapoints", headers=headers, params=params)
    assert [p["value"] for p in r.json()["items"]] == [100.0]
    r = await station.client.get("/api/v1/datapoints", headers=headers, params={**params, "bucket": "1h"})
    assert sum(b["count"] for b in r.json()["items"]) == 31  # the old data is still summarised

    await station.client.patch(
        "/api/v1/channels/flow:lab/t", headers=headers, json={"rollup_1m_retention_days": 30}
    )
    removed = await station.ctx.retention.purge_once()
    assert removed["raw"] == 0 and removed["1m"] >= 1 and removed["1h"] == 0


async def test_per_channel_retention_overrides_the_default(station: StationHandle) -> None:
    headers = await station.owner_headers()
    now = datetime.now(UTC)
    items = [
        {"channel": "flow:lab/h", "value": 1.0, "ts": (now - timedelta(days=3)).isoformat()},
        {"channel": "flow:lab/h", "value": 2.0, "ts": now.isoformat()},
    ]
    await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": items})
    r = await station.client.patch(
        "/api/v1/channels/flow:lab/h", headers=headers, json={"raw_retention_days": 1}
    )
    assert r.status_code == 200 and r.json()["raw_retention_days"] == 1
    removed = await station.ctx.retention.purge_once()
    assert removed["raw"] == 1


async def test_websocket_streams_live_values_for_chosen_channels(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("ws-1", "climate")
    token = headers["Authorization"].split()[1]
    url = station.base_url.replace("http", "ws") + "/api/v1/ws/telemetry?channels=device:ws-1/temperature"
    async with (
        websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws,
        DeviceClient(station.mqtt_port, station.station_id, "ws-1") as dev,
    ):
        await dev.publish("state", {"state": {"temperature": 23.5, "humidity": 40}})
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["type"] == "datapoints"
    assert message["items"] == [
        {"channel": "device:ws-1/temperature", "value": 23.5, "ts": message["items"][0]["ts"]}
    ]


async def test_websocket_rate_is_limited_and_auth_required(station: StationHandle) -> None:
    headers = await station.owner_headers()
    url = station.base_url.replace("http", "ws") + "/api/v1/ws/telemetry"
    async with websockets.connect(url + "?access_token=bad") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4401
    token = headers["Authorization"].split()[1]
    received: list[float] = []
    async with websockets.connect(f"{url}?access_token={token}") as ws:

        async def produce() -> None:
            for i in range(40):
                await station.client.post(
                    "/api/v1/datapoints/batch",
                    headers=headers,
                    json={"items": [{"channel": "flow:rate/x", "value": float(i)}]},
                )
                await asyncio.sleep(0.025)

        producer = asyncio.create_task(produce())
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(ws.recv(), 0.5)
                received.append(time.monotonic())
            except TimeoutError:
                if producer.done():
                    break
        await producer
    assert received
    gaps = [b - a for a, b in itertools.pairwise(received)]
    assert all(g >= 0.15 for g in gaps), gaps  # at most ~5 messages per second


async def test_slow_database_pauses_the_link_and_loses_nothing(settings_factory) -> None:
    settings = settings_factory(ingest_max_queue_rows=100, ingest_batch_rows=50, ingest_batch_ms=10)
    async with start_station(settings) as station:
        await station.create_device("bp-1", "sensor")
        ingest = station.ctx.ingest
        real_write = ingest._write
        paused_seen: list[bool] = []
        max_queue: list[int] = []

        async def slow_write(items):  # the database is slower than the input
            await asyncio.sleep(0.05)
            paused_seen.append(station.ctx.mqtt.paused)
            max_queue.append(ingest.queue_rows)
            return await real_write(items)

        ingest._write = slow_write
        async with DeviceClient(station.mqtt_port, station.station_id, "bp-1") as dev:
            for i in range(600):
                await dev.publish("state", {"state": {"value": i}, "ts": 1795000000000 + i})

            async def all_stored() -> bool:
                return ingest.committed_rows >= 600

            await wait_for(all_stored, timeout=60, message="all 600 rows stored")
        assert any(paused_seen), "the link should have been paused"
        assert not station.ctx.mqtt.paused
        # Bounded: the queue never held much more than its limit (one message's rows of overshoot).
        assert max(max_queue) <= 100 + 1
        assert station.ctx.ingest.duplicate_rows == 0


async def test_websocket_accepts_an_api_token(station: StationHandle) -> None:
    owner = await station.owner_headers()
    token = (
        await station.client.post(
            "/api/v1/tokens", headers=owner, json={"name": "ws", "scopes": ["api:read"]}
        )
    ).json()["token"]
    url = station.base_url.replace("http", "ws") + f"/api/v1/ws/telemetry?access_token={token}"
    async with websockets.connect(url) as ws:
        await station.client.post(
            "/api/v1/datapoints/batch",
            headers=owner,
            json={"items": [{"channel": "flow:wst/x", "value": 7.0}]},
        )
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["items"][0]["value"] == 7.0
