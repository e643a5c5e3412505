"""`Cluster`: this process as one of several workers (docs/scaling.md), or None when it runs alone.

A worker exists with `WAYSTATION_CLUSTER=on` (`run --workers N` sets it) on PostgreSQL with an external
broker: SQLite allows one writer process, and the embedded broker belongs to one process. One process
stays as it was (plain subscriptions): docs/scaling.md says what shared subscriptions cost on a broker
restart. It holds a worker slot (its MQTT
identity), bridges the bus, and competes for leadership, under which the singleton jobs registered
with `singleton()` run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import text

from waystation.bus import Bus
from waystation.cluster import locks
from waystation.cluster.adopt import SessionAdopter
from waystation.cluster.bridge import BusBridge
from waystation.cluster.leadership import Leadership
from waystation.cluster.worker import WorkerSlot
from waystation.config import Settings
from waystation.db import Database
from waystation.mqtt.link import MqttLink

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]


def wanted(settings: Settings) -> bool:
    return settings.cluster == "on" and not settings.is_sqlite and not settings.mqtt.embedded


class Cluster:
    def __init__(self, settings: Settings, db: Database, bus: Bus, slot: WorkerSlot) -> None:
        self.settings = settings
        self.db = db
        self.slot = slot
        self.bridge = BusBridge(settings, bus, slot.name)
        self.leadership = Leadership(settings, locks.LEADER_LOCK, slot.application_name + "-leader")
        self.leadership.add_listener(self.bridge.set_leader)
        self.started_at = time.time()
        self._jobs: list[tuple[str, Job]] = []
        self._followers: list[tuple[str, Job]] = []
        self.adopter: SessionAdopter | None = None

    @classmethod
    async def join(cls, settings: Settings, db: Database, bus: Bus) -> Cluster | None:
        """Take a worker slot when this process is one of several possible workers; else None."""
        if not wanted(settings):
            return None
        slot = WorkerSlot(settings)
        await slot.acquire()
        return cls(settings, db, bus, slot)

    @property
    def worker(self) -> str:
        return self.slot.name

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    def client_id(self, base: str) -> str:
        """The worker's MQTT client id: one persistent session per slot."""
        return f"{base}-{self.slot.name}"

    @staticmethod
    def share_group(station_id: str) -> str:
        """`$share/waystation-<station>/<filter>`: one group per installation, so two installations on
        one broker (or test stations, one after another) never take each other's messages."""
        return f"waystation-{station_id}"

    def adopt_sessions(self, link: MqttLink) -> None:
        """The leader ends the MQTT sessions of workers gone for good, after handling what they hold."""
        base = link.client_id.removesuffix(f"-{self.worker}")
        self.adopter = SessionAdopter(self.settings, self.slot, link, lambda w: f"{base}-{w}")
        self.singleton("mqtt-adopt", self.adopter.run)

    def singleton(self, name: str, job: Job) -> None:
        """Run `job` (already supervised) only while this worker is the leader."""
        self._jobs.append((name, job))

    def everywhere(self, name: str, job: Job) -> None:
        """Run `job` on every worker beside the cluster's own tasks (cancelled with them)."""
        self._followers.append((name, job))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.slot.watch(), name="worker-slot")
            tasks.create_task(self.bridge.run(), name="bus-bridge")
            tasks.create_task(self.leadership.run(self._lead), name="leadership")
            for name, job in self._followers:
                tasks.create_task(job(), name=name)

    async def _lead(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for name, job in self._jobs:
                tasks.create_task(job(), name=name)

    async def close(self) -> None:
        self.bridge.close()
        await self.slot.release()

    async def status(self) -> dict[str, Any]:
        """This worker, the leader and every live worker, as PostgreSQL's lock table says."""
        first = locks.SLOT_LOCK_BASE
        last = first + self.settings.cluster_max_workers - 1
        async with self.db.session() as session:
            rows = await session.execute(
                text(
                    "SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, a.application_name "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                )
            )
            held = {int(key): str(name) for key, name in rows}
        workers = sorted(
            (name.removeprefix("waystation-") for key, name in held.items() if first <= key <= last),
            key=lambda w: int(w[1:]) if w[1:].isdigit() else 0,
        )
        leader = held.get(locks.LEADER_LOCK)
        return {
            "worker": self.worker,
            "leader": leader.removeprefix("waystation-").removesuffix("-leader") if leader else None,
            "is_leader": self.is_leader,
            "workers": workers,
            "jobs": [name for name, _ in self._jobs],
            "adopted_sessions": self.adopter.adopted if self.adopter else [],
            "bridge": {
                "listening": self.bridge.listening,
                "sent": self.bridge.sent,
                "received": self.bridge.received,
                "dropped_oversize": self.bridge.dropped_oversize,
                "dropped_queue": self.bridge.dropped_queue,
                "send_failures": self.bridge.send_failures,
            },
        }


def periodically(seconds: float, fn: Job) -> Job:
    """A job calling `fn` every `seconds` (errors logged, never fatal): state other workers change
    without an event, such as webhook endpoints, is read again this often."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except Exception:
                log.exception("periodic %s failed", getattr(fn, "__qualname__", "job"))

    return loop
