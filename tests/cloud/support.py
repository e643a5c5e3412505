"""Shared pieces of the cloud link tests: fast link settings and claiming a station."""

from __future__ import annotations

from typing import Any

from tests.helpers import StationHandle, wait_for
from waystation.cloud.fake import FakeCloud, FakeStation

FAST = {
    "cloud_ping_interval_seconds": 5.0,
    "cloud_backoff_initial_seconds": 0.1,
    "cloud_backoff_max_seconds": 0.5,
    "cloud_backoff_jitter": 0.2,
    "cloud_rpc_timeout_seconds": 3.0,
    "cloud_replay_rate": 200.0,
}


async def cloud_status(st: StationHandle) -> dict[str, Any]:
    r = await st.client.get("/api/v1/cloud/status", headers=await st.owner_headers())
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_state(st: StationHandle, state: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status = await cloud_status(st)
        return status if status["state"] == state else None

    return await wait_for(check, timeout=timeout, message=f"cloud link {state}")


async def claim(st: StationHandle, fake: FakeCloud) -> FakeStation:
    """Claim through the API and wait until the link is connected; the fake's record of the station."""
    r = await st.client.post("/api/v1/cloud/claim", headers=await st.owner_headers())
    assert r.status_code == 200, r.text
    status = await wait_state(st, "connected")
    assert status["claimed"] is True
    chip_id = status["chip_id"]
    await wait_for(lambda: chip_id in fake.stations and fake.stations[chip_id].connected, message="auth")
    return fake.stations[chip_id]


async def set_channels(fake: FakeCloud, chip_id: str, channels: list[str]) -> None:
    answer = await fake.call(chip_id, "station.setActiveChannels", {"channels": channels})
    assert answer.get("result") == {"ok": True}, answer
