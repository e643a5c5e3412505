"""A fleet of simulated devices in one process, and their registration in a station's database."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from sqlalchemy import select

from waystation.db import Database
from waystation.devices.models import Device
from waystation.simulator.device import SimConfig, SimulatedDevice

FLEET_TYPES = ("climate", "pir", "light", "switch-pir", "sensor")
_NAMES = {"climate": "Climate", "pir": "Motion", "light": "Light", "switch-pir": "Switch", "sensor": "Sensor"}


@dataclass(frozen=True)
class FleetMember:
    device_id: str
    type: str
    name: str


def plan_fleet(count: int, prefix: str = "sim", only_type: str | None = None) -> list[FleetMember]:
    members = []
    for i in range(count):
        type_id = only_type or FLEET_TYPES[i % len(FLEET_TYPES)]
        members.append(
            FleetMember(f"{prefix}-{i + 1:04d}", type_id, f"{_NAMES.get(type_id, type_id)} {i + 1}")
        )
    return members


async def register_fleet(db: Database, station_id: str, members: list[FleetMember]) -> int:
    """Create the devices that do not exist yet (idempotent); returns how many were created."""
    async with db.session() as session:
        existing = set(
            (
                await session.scalars(select(Device.id).where(Device.id.in_([m.device_id for m in members])))
            ).all()
        )
        created = 0
        for m in members:
            if m.device_id not in existing:
                session.add(
                    Device(
                        id=m.device_id,
                        station_id=station_id,
                        type=m.type,
                        name=m.name,
                        status="unknown",
                        state={},
                    )
                )
                created += 1
    return created


class Fleet:
    def __init__(self, members: list[FleetMember], config: SimConfig, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self.devices = [
            SimulatedDevice(m.device_id, m.type, config, rng=random.Random(rng.random())) for m in members
        ]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for device in self.devices:
                tasks.create_task(device.run(), name=f"sim-{device.device_id}")

    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.connected)

    @property
    def published(self) -> int:
        return sum(d.published for d in self.devices)
