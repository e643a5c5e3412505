"""A worker's identity: the lowest free slot `i`, held as an advisory lock for the process lifetime.

The slot names the worker's MQTT client (`waystation-<station>-w<i>`), so the broker keeps one
persistent session per slot: a worker restarted into its slot gets the QoS 1 messages the broker queued
for it (docs/scaling.md has the measurement). Two live processes must never share a slot (they would
take the MQTT session from each other), hence the lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import asyncpg

from waystation.cluster import locks
from waystation.config import Settings

log = logging.getLogger(__name__)

WATCH_SECONDS = 2.0


class NoFreeSlot(RuntimeError):
    """Every worker slot is taken (a start-up failure, never an HTTP answer)."""


def slot_name(index: int) -> str:
    return f"w{index}"


class WorkerSlot:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = -1
        self._conn: asyncpg.Connection | None = None

    @property
    def name(self) -> str:
        return slot_name(self.index)

    @property
    def application_name(self) -> str:
        return f"waystation-{self.name}"

    async def acquire(self) -> int:
        """Take the lowest free slot; raises `NoFreeSlot` when all `cluster_max_workers` are taken."""
        self._conn = await locks.connect(self.settings, "waystation-slot")
        for index in range(self.settings.cluster_max_workers):
            if await locks.try_lock(self._conn, locks.SLOT_LOCK_BASE + index):
                self.index = index
                await self._conn.execute(f"SET application_name = '{self.application_name}'")
                log.info("worker slot %s taken (pid %d)", self.name, os.getpid())
                return index
        await locks.close(self._conn)
        raise NoFreeSlot(
            f"All {self.settings.cluster_max_workers} worker slots are taken; raise "
            f"WAYSTATION_CLUSTER_MAX_WORKERS or stop a worker."
        )

    async def watch(self) -> None:
        """Keep the slot; when its connection drops, take the same slot again. If another process got
        it meanwhile, this one must not go on under the same MQTT identity: it stops (a supervisor,
        uvicorn's worker manager or systemd, starts it again into a free slot)."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if self._conn is not None and await locks.alive(self._conn):
                continue
            await locks.close(self._conn)
            self._conn = None
            log.warning("worker slot %s: database connection lost; taking the slot again", self.name)
            while self._conn is None:
                try:
                    conn = await locks.connect(self.settings, self.application_name)
                except locks.DB_ERRORS:
                    await asyncio.sleep(WATCH_SECONDS)  # the database is down: nobody else can take it
                    continue
                if await locks.try_lock(conn, locks.SLOT_LOCK_BASE + self.index):
                    self._conn = conn
                    log.info("worker slot %s taken again", self.name)
                    break
                await locks.close(conn)
                log.error("worker slot %s was taken by another process; stopping this worker", self.name)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    async def release(self) -> None:
        await locks.close(self._conn)
        self._conn = None
