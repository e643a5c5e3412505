"""A fleet of simulated devices in one process, and their registration in a station's database."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from sqlalchemy import select

from waystation.broker.credentials import issue_credentials
from waystation.broker.models import DeviceCredential
from waystation.db import Database
from waystation.devices.models import Device
from waystation.secrets_box import SecretBox
from waystation.simulator.device import DeviceLogin, SimConfig, SimulatedDevice

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


async def fleet_logins(db: Database, box: SecretBox, members: list[FleetMember]) -> dict[str, DeviceLogin]:
    """Each (registered) member's broker account: the existing one, or a new one issued exactly as
    `POST /api/v1/devices` does (the station's broker sync creates it on the broker)."""
    logins: dict[str, DeviceLogin] = {}
    async with db.session() as session:
        ids = [m.device_id for m in members]
        query = select(DeviceCredential).where(DeviceCredential.device_id.in_(ids))
        creds = {c.device_id: c for c in await session.scalars(query)}
        for device_id in ids:
            cred = creds.get(device_id)
            if cred is not None:
                try:
                    password = box.open(cred.password_sealed)
                    logins[device_id] = DeviceLogin(cred.username, password, cred.client_id)
                    continue
                except ValueError:
                    pass  # sealed with another key: issue a new password below
            issued = await issue_credentials(session, box, device_id)
            logins[device_id] = DeviceLogin(issued.username, issued.password, issued.client_id)
    return logins


class Fleet:
    def __init__(
        self,
        members: list[FleetMember],
        config: SimConfig,
        seed: int | None = None,
        logins: dict[str, DeviceLogin] | None = None,
    ) -> None:
        rng = random.Random(seed)
        logins = logins or {}
        self.devices = [
            SimulatedDevice(
                m.device_id, m.type, config, rng=random.Random(rng.random()), login=logins.get(m.device_id)
            )
            for m in members
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
