"""`waystation run --demo`: a small simulated fleet inside the station process."""

from __future__ import annotations

import logging
from dataclasses import replace

from waystation.context import AppContext
from waystation.simulator.device import SimConfig
from waystation.simulator.fleet import Fleet, fleet_logins, plan_fleet, register_fleet

log = logging.getLogger(__name__)


async def run_demo_fleet(ctx: AppContext) -> None:
    members = plan_fleet(ctx.settings.demo_devices, prefix="demo")
    created = await register_fleet(ctx.db, ctx.default_station_id, members)
    if ctx.devices is not None:
        for m in members:
            if m.device_id not in ctx.devices.known:
                ctx.devices.device_added(m.device_id, ctx.default_station_id, m.type)
    log.info("demo fleet: %d simulated devices (%d new)", len(members), created)
    endpoint = replace(ctx.settings.mqtt, embedded=False)
    # Where the broker enforces accounts, each simulated device logs in with its own, like a real one.
    enforced = ctx.broker_sync is not None and ctx.broker_sync.mode != "none"
    logins = await fleet_logins(ctx.db, ctx.box, members) if enforced else None
    fleet = Fleet(
        members,
        SimConfig(
            endpoint=endpoint, station_id=ctx.default_station_id, state_interval=5.0, heartbeat_interval=30.0
        ),
        logins=logins,
    )
    await fleet.run()
