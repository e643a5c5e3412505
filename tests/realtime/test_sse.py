"""SSE over real HTTP: filters, Last-Event-ID replay, station events."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson

from tests.helpers import DeviceClient, StationHandle, wait_for


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    into: list[dict[str, Any]],
) -> None:
    async with client.stream("GET", url, headers=headers, timeout=None) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                event["id"] = int(line[3:].strip())
            elif line.startswith("event:"):
                event["event"] = line[6:].strip()
            elif line.startswith("data:"):
                event["data"] = orjson.loads(line[5:].strip())
            elif line == "" and event:
                into.append(event)
                event = {}


async def test_stream_delivers_filtered_device_events(station: StationHandle) -> None:
    headers = await station.owner_headers()
    got: list[dict[str, Any]] = []
    reader = asyncio.create_task(
        read_events(station.client, "/api/v1/events/stream?types=device.*", headers, got)
    )
    try:
        await asyncio.sleep(0.3)
        await station.create_device("sse-1", "climate")
        async with DeviceClient(station.mqtt_port, station.station_id, "sse-1") as dev:
            await dev.publish("state", {"state": {"temperature": 20.5}})
            await wait_for(
                lambda: any(e["event"] == "device.state_changed" for e in got), message="state event"
            )
        types = [e["event"] for e in got]
        assert types[0] == "device.created"
        assert "device.online" in types
        state = next(e for e in got if e["event"] == "device.state_changed")
        assert state["data"]["device_id"] == "sse-1" and state["data"]["state"] == {"temperature": 20.5}
        assert all(t.startswith("device.") for t in types)
        ids = [e["id"] for e in got]
        assert ids == sorted(ids)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_last_event_id_replays_missed_events(station: StationHandle) -> None:
    headers = await station.owner_headers()
    for i in range(3):
        await station.create_device(f"rp-{i}", "light")
    first_seq = next(e.seq for e in station.ctx.bus.ring if e.data.get("device_id") == "rp-0")
    got: list[dict[str, Any]] = []
    reader = asyncio.create_task(
        read_events(
            station.client,
            "/api/v1/events/stream?types=device.created",
            {**headers, "Last-Event-ID": str(first_seq)},
            got,
        )
    )
    try:
        await wait_for(lambda: len(got) >= 2, message="replayed events")
        assert [e["data"]["device_id"] for e in got[:2]] == ["rp-1", "rp-2"]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_stream_requires_authentication(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/events/stream")
    assert r.status_code == 401


async def test_internal_event_types_are_not_for_clients(station: StationHandle) -> None:
    headers = await station.owner_headers()
    for types in ("_cloud.control", "device.*,_telemetry.readings"):
        r = await station.client.get("/api/v1/events/stream", params={"types": types}, headers=headers)
        assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED", r.text
        assert "internal" in r.json()["detail"]
