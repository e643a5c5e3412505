"""Helpers for the controller tests: a controller configured through the API, and one running in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.helpers import StationHandle, wait_for
from waystation.controller.process import Controller
from waystation.controller.settings import ControllerSettings

SIM_CHANNELS = [
    {"id": "t", "waveform": "sine", "period": 10, "amplitude": 2, "offset": 20, "unit": "°C"},
    {"id": "w", "waveform": "random_walk", "min": 0, "max": 100, "start": 50},
    {"id": "heater", "waveform": "output", "min": 0, "max": 100, "initial": 0, "safe": 0},
]


async def create_controller(
    station: StationHandle,
    controller_id: str,
    *,
    interval: float = 0.05,
    channels: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A controller with one `simulated` instance `sim` whose channels are all mapped; returns its token."""
    h = headers or await station.owner_headers()
    r = await station.client.post("/api/v1/controllers", headers=h, json={"id": controller_id})
    assert r.status_code == 201, r.text
    token = str(r.json()["token"])
    chans = channels or SIM_CHANNELS
    r = await station.client.post(
        f"/api/v1/controllers/{controller_id}/plugins",
        headers=h,
        json={
            "name": "sim",
            "plugin": "simulated",
            "config": {"seed": 1, "channels": chans},
            "interval_seconds": interval,
        },
    )
    assert r.status_code == 201, r.text
    for c in chans:
        output = c.get("waveform") == "output"
        body: dict[str, Any] = {"instance": "sim", "plugin_channel": c["id"], "unit": c.get("unit")}
        if output:
            body.update(direction="output", min=c.get("min"), max=c.get("max"))
        r = await station.client.post(f"/api/v1/controllers/{controller_id}/mappings", headers=h, json=body)
        assert r.status_code == 201, r.text
    return token


def controller_settings(url: str, token: str, buffer_dir: Path, **extra: Any) -> ControllerSettings:
    values: dict[str, Any] = {
        "url": url,
        "token": token,
        "buffer_dir": buffer_dir,
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.5,
        "status_interval_seconds": 0.2,
        "shutdown_flush_seconds": 3,
        "ack_timeout_seconds": 5,
    }
    values.update(extra)
    return ControllerSettings(**values)


@contextlib.asynccontextmanager
async def running_controller(
    settings: ControllerSettings, *, wait_state: str | None = "websocket", **kwargs: Any
) -> AsyncIterator[Controller]:
    controller = Controller(settings, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        if wait_state is not None:
            await wait_for(
                lambda: controller.link.state == wait_state or task.done(), timeout=10, message=wait_state
            )
            if task.done():
                task.result()
        yield controller
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # generous: a loaded CI machine is slow to flush


async def count_rows(station: StationHandle, channel: str) -> int:
    """Datapoints stored for a channel (all of them, paging through)."""
    headers = await station.owner_headers()
    total, cursor = 0, None
    while True:
        params = {
            "channel": channel,
            "from": "2000-01-01T00:00:00Z",
            "to": "2100-01-01T00:00:00Z",
            "limit": 10000,
        }
        if cursor:
            params["cursor"] = cursor
        r = await station.client.get("/api/v1/datapoints", headers=headers, params=params)
        if r.status_code == 404:
            return 0
        assert r.status_code == 200, r.text
        total += len(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if not cursor:
            return total
