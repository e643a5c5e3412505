"""The leader adopts the MQTT sessions of workers that are gone, so nothing waits in them for days.

Measured on Mosquitto 2.0 (docs/scaling.md, bench/shared_sub_probe.py): a shared-subscription member
whose persistent session outlives its connection keeps getting its turn of new messages (queued for
it), and keeps the ones it had not acknowledged; the others get none of them. A worker restarted into
its slot picks them up. When a slot stays free for `cluster_adopt_after_seconds` (a worker stopped for
good, a machine lost), the leader takes the slot's lock, connects as that slot's client with the same
handlers, lets the queued messages through the normal pipeline (acknowledged after commit), leaves the
shared subscriptions, waits until nothing is unacknowledged, and ends the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from waystation.cluster import locks
from waystation.cluster.worker import WorkerSlot, slot_name
from waystation.config import Settings
from waystation.mqtt.link import MqttLink

log = logging.getLogger(__name__)

QUIET_SECONDS = 1.0  # no message for this long (and nothing unacknowledged): the session is drained
DRAIN_LIMIT_SECONDS = 300.0
SCAN_MARGIN = 2  # slots above the highest live one that are checked too (workers scaled down)


class SessionAdopter:
    def __init__(
        self,
        settings: Settings,
        slot: WorkerSlot,
        main: MqttLink,
        client_id_of: Callable[[str], str],
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.main = main
        self.client_id_of = client_id_of
        self.adopted: list[dict[str, object]] = []
        self._free_since: dict[int, float] = {}
        self._seen: set[int] = set()
        self._clean: set[int] = set()  # free slots known to have no session (until held again)

    async def run(self) -> None:
        """Scan until cancelled; a failure (database, broker) is logged and the scan starts over."""
        interval = max(0.5, min(5.0, self.settings.cluster_adopt_after_seconds / 2))
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await locks.connect(self.settings, f"{self.slot.application_name}-adopter")
                while True:
                    await self.scan(conn)
                    await asyncio.sleep(interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("adopting MQTT sessions failed; trying again")
            finally:
                await locks.close(conn)
            await asyncio.sleep(interval)

    async def scan(self, conn: asyncpg.Connection) -> None:
        first = locks.SLOT_LOCK_BASE
        held = {
            key - first
            for key in await locks.holders(conn, first, first + self.settings.cluster_max_workers - 1)
        }
        self._seen |= held
        self._clean -= held
        top = max(held | self._seen | {0})
        candidates = (self._seen | set(range(top + 1 + SCAN_MARGIN))) - held - self._clean - {self.slot.index}
        now = time.monotonic()
        for index in sorted(candidates):
            if index >= self.settings.cluster_max_workers:
                continue
            since = self._free_since.setdefault(index, now)
            if now - since >= self.settings.cluster_adopt_after_seconds:
                await self.adopt(conn, index)
        for index in held:
            self._free_since.pop(index, None)

    async def adopt(self, conn: asyncpg.Connection, index: int) -> None:
        key = locks.SLOT_LOCK_BASE + index
        if not await locks.try_lock(conn, key):
            return  # a worker started into it meanwhile
        name = slot_name(index)
        link = self.main.sibling(self.client_id_of(name))
        end_session = False
        try:
            link.mirror(self.main)
            link.start()
            if not await link.wait_connected(10.0):
                log.warning("adopting the MQTT session of %s: broker unreachable; later", name)
                return
            end_session = not link.session_present
            if link.session_present:
                drained = await _drain(link)
                link.unsubscribe_all()  # no new messages for this session from here on
                # Ended only when everything it held is committed and acknowledged; else kept for later.
                end_session = drained and await _drain(link)
                log.info("adopted the MQTT session of gone worker %s: %d message(s)", name, link.received)
                self.adopted.append({"worker": name, "messages": link.received, "at": time.time()})
            if end_session:
                self._seen.discard(index)
                self._clean.add(index)
                self._free_since.pop(index, None)
        finally:
            await link.stop(end_session=end_session)
            await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def _drain(link: MqttLink) -> bool:
    """Until nothing arrived for a while and everything received is acknowledged (committed)."""
    deadline = time.monotonic() + DRAIN_LIMIT_SECONDS
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if link.received != last or link.unacked or link.inbox_depth:
            last, quiet_since = link.received, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return True
    log.warning("session of %s not drained in %.0fs; kept for later", link.client_id, DRAIN_LIMIT_SECONDS)
    return False
