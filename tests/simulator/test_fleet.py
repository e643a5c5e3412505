"""Simulated devices speak the protocol: they come online with state and apply commands."""

from __future__ import annotations

import random
from dataclasses import replace

from tests.helpers import StationHandle, wait_for
from waystation.simulator.device import SimConfig, apply_command, initial_state, step_state
from waystation.simulator.fleet import Fleet, plan_fleet, register_fleet


def test_state_stays_plausible_over_many_steps() -> None:
    rng = random.Random(1)
    state = initial_state("climate", rng)
    for _ in range(5000):
        step_state("climate", state, rng)
    assert 10 < state["temperature"] < 35 and 10 <= state["humidity"] <= 95


def test_commands_change_the_state_or_say_why_not() -> None:
    state = initial_state("light", random.Random(1))
    assert apply_command("light", state, "set_brightness", {"brightness": 0}) is None
    assert state == {"on": False, "brightness": 0}
    assert apply_command("light", state, "set_sensitivity", {"level": 3}) is not None


async def test_fleet_comes_online_and_applies_commands(station: StationHandle) -> None:
    import asyncio
    import contextlib

    members = plan_fleet(10, prefix="fl")
    await register_fleet(station.ctx.db, station.station_id, members)
    for m in members:
        station.ctx.devices.device_added(m.device_id, station.station_id, m.type)
    endpoint = replace(station.settings.mqtt, embedded=False)
    fleet = Fleet(members, SimConfig(endpoint=endpoint, station_id=station.station_id, state_interval=0.5))
    task = asyncio.create_task(fleet.run())
    headers = await station.owner_headers()
    try:

        async def all_online() -> bool:
            r = await station.client.get("/api/v1/devices", headers=headers, params={"status": "online"})
            return len([d for d in r.json()["items"] if d["state"]]) == 10

        await wait_for(all_online, timeout=20, message="fleet online with state")
        light = next(m.device_id for m in members if m.type == "light")
        r = await station.client.post(
            f"/api/v1/devices/{light}/commands",
            headers=headers,
            json={"action": "set_brightness", "brightness": 75},
        )
        request_id = r.json()["request_id"]

        async def applied_and_reflected() -> bool:
            c = await station.client.get(f"/api/v1/devices/{light}/commands/{request_id}", headers=headers)
            d = await station.device(light)
            return c.json()["status"] == "applied" and d["state"].get("brightness") == 75

        await wait_for(applied_and_reflected, timeout=10, message="command applied and reflected in state")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BaseException):
            await task
