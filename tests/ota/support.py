"""Shared pieces of the OTA tests: uploads, simulated devices on the session Mosquitto, rollout polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx

from tests.helpers import StationHandle, wait_for
from waystation.simulator.device import FIRMWARE_VERSION, SimConfig, SimulatedDevice

# Small settings so a rollout takes seconds: quick checks and flushes.
FAST: dict[str, Any] = {"ota_check_interval_seconds": 0.1}


def image(size: int = 100_000) -> bytes:
    return os.urandom(size)


async def upload(
    station: StationHandle,
    headers: dict[str, str],
    content: bytes,
    *,
    version: str = "2.0.0",
    device_type: str = "climate",
    notes: str = "",
    station_id: str | None = None,
) -> httpx.Response:
    return await station.client.post(
        "/api/v1/firmware",
        headers=headers,
        params={"station_id": station_id} if station_id else None,
        files={"file": ("fw.bin", content, "application/octet-stream")},
        data={"version": version, "device_type": device_type, "notes": notes},
    )


async def uploaded(station: StationHandle, content: bytes, **kwargs: Any) -> dict[str, Any]:
    r = await upload(station, await station.owner_headers(), content, **kwargs)
    assert r.status_code == 201, r.text
    return dict(r.json())


def sim(station: StationHandle, device_id: str, type_id: str = "climate") -> SimulatedDevice:
    endpoint = replace(station.settings.mqtt, embedded=False)
    config = SimConfig(
        endpoint=endpoint,
        station_id=station.station_id,
        state_interval=5.0,
        heartbeat_interval=5.0,
        ota_step_delay=0.1,
    )
    return SimulatedDevice(device_id, type_id, config)


@contextlib.asynccontextmanager
async def running(*devices: SimulatedDevice) -> AsyncIterator[None]:
    """Run simulated devices for the duration of the block."""
    tasks = [asyncio.create_task(d.run(), name=f"sim-{d.device_id}") for d in devices]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, BaseException):
                await task


async def online(station: StationHandle, *device_ids: str, version: str = FIRMWARE_VERSION) -> None:
    async def ready() -> bool:
        for device_id in device_ids:
            d = await station.device(device_id)
            if d["status"] != "online" or d["firmware_version"] != version:
                return False
        return True

    await wait_for(ready, timeout=15, message=f"{device_ids} online with {version}")


async def job(station: StationHandle, job_id: int) -> dict[str, Any]:
    r = await station.client.get(f"/api/v1/ota/jobs/{job_id}", headers=await station.owner_headers())
    assert r.status_code == 200, r.text
    return dict(r.json())


async def job_where(
    station: StationHandle, job_id: int, check: Any, message: str, timeout: float = 20
) -> Any:
    async def matches() -> dict[str, Any] | None:
        current = await job(station, job_id)
        return current if check(current) else None

    return await wait_for(matches, timeout=timeout, interval=0.1, message=message)


async def log_in_again(station: StationHandle) -> None:
    """After a restart the owner exists already: log in instead of the first-run setup."""
    r = await station.client.post(
        "/api/v1/auth/login", json={"username": "owner", "password": "owner-password-1"}
    )
    assert r.status_code == 200, r.text
    station._tokens["owner"] = r.json()["access_token"]


def states(detail: dict[str, Any]) -> dict[str, str]:
    return {d["device_id"]: d["state"] for d in detail["devices"]}
