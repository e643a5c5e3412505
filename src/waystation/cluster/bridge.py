"""The bus across workers, over PostgreSQL LISTEN/NOTIFY (measured and argued in docs/scaling.md).

Every event produced in this process (`origin` None) is sent as one NOTIFY on `waystation_bus`, and
every worker's listener publishes what the others sent into its own bus with `origin` set, so SSE and
WebSocket clients on any worker see every event. Consumers that must act once per event subscribe
with `local_only` (each worker acts on its own events) or run on the leader only.

Stored readings (`_telemetry.readings`, internal) go on `waystation_readings`, which only the leader
listens to: the rule engine there needs every reading of a channel, whichever worker stored it.

NOTIFY payloads are limited to 8000 bytes: an event whose list (`items`, `readings`) makes it larger
is split into several; any other too-large event is dropped and counted. A send that fails (database
down) is retried; meanwhile the bounded queue drops its oldest events (counted).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson

from waystation.bus import Bus, Event, Gap, TypeFilter
from waystation.cloud.link import CONTROL_EVENT
from waystation.cluster import locks
from waystation.config import Settings
from waystation.telemetry.ingest import READINGS_EVENT

log = logging.getLogger(__name__)

BUS_CHANNEL = "waystation_bus"
READINGS_CHANNEL = "waystation_readings"
MAX_PAYLOAD = 7900  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 bytes and more
SEND_BATCH = 500  # events per transaction (one commit sends them all)
SPLITTABLE = ("items", "readings")  # list members an oversized event may be split along
NOT_BRIDGED = frozenset({"system.status"})  # each worker's own figures, meaningless elsewhere
# Internal events (never shown to clients) that cross workers; "*" does not match internal types.
BRIDGED_INTERNAL = (READINGS_EVENT, CONTROL_EVENT)
CHECK_SECONDS = 2.0


class BusBridge:
    def __init__(self, settings: Settings, bus: Bus, worker: str) -> None:
        self.settings = settings
        self.bus = bus
        self.worker = worker
        # Subscribed at once, before events flow; local events only, so nothing is echoed back.
        self._sub = bus.subscribe(
            TypeFilter([*BRIDGED_INTERNAL, "*"]), maxsize=settings.cluster_bridge_queue, local_only=True
        )
        self._leader = False
        self._leader_changed = asyncio.Event()
        self.sent = 0
        self.received = 0
        self.dropped_oversize = 0
        self.dropped_queue = 0
        self.send_failures = 0
        self.listening = False

    def set_leader(self, leader: bool) -> None:
        """The leader listens to every worker's readings (and need not send its own: it has them)."""
        self._leader = leader
        self._leader_changed.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._send_loop())
            tasks.create_task(self._listen_loop())

    def close(self) -> None:
        self._sub.close()

    # --- out ----------------------------------------------------------------------------------------

    def encode(self, ev: Event) -> list[tuple[str, str]]:
        """(channel, payload) rows for one event: usually one, several for a split event."""
        channel = READINGS_CHANNEL if ev.type == READINGS_EVENT else BUS_CHANNEL
        return [(channel, payload) for payload in self._payloads(ev.type, ev.data, ev.station_id, ev.ts)]

    def _payloads(self, type_: str, data: dict[str, Any], station_id: str | None, ts: float) -> list[str]:
        raw = orjson.dumps({"w": self.worker, "t": type_, "s": station_id, "ts": ts, "d": data})
        if len(raw) <= MAX_PAYLOAD:
            return [raw.decode()]
        key = next((k for k in SPLITTABLE if isinstance(data.get(k), list) and len(data[k]) > 1), None)
        if key is None:
            self.dropped_oversize += 1
            log.warning("bus event %s is %d bytes, too large to bridge; dropped", type_, len(raw))
            return []
        items = data[key]
        half = len(items) // 2
        out: list[str] = []
        for part in (items[:half], items[half:]):
            piece = {**data, key: part}
            if "count" in data:
                piece["count"] = len(part)
            out.extend(self._payloads(type_, piece, station_id, ts))
        return out

    async def _send_loop(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while True:
                rows = self._encode_batch(await self._sub.get())
                while rows:
                    try:
                        if conn is None or conn.is_closed():
                            conn = await locks.connect(self.settings, f"waystation-{self.worker}-bus-out")
                        async with conn.transaction():
                            await conn.executemany("SELECT pg_notify($1, $2)", rows)
                        self.sent += len(rows)
                        break
                    except locks.DB_ERRORS as exc:
                        self.send_failures += 1
                        log.warning("bridging bus events failed (%s); retrying", type(exc).__name__)
                        await locks.close(conn)
                        conn = None
                        await asyncio.sleep(1.0)
        finally:
            await locks.close(conn)

    def _encode_batch(self, first: Event | Gap) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        item: Event | Gap | None = first
        taken = 0
        while item is not None and taken < SEND_BATCH:
            taken += 1
            if isinstance(item, Gap):
                self.dropped_queue += item.dropped
            elif item.type not in NOT_BRIDGED and not (item.type == READINGS_EVENT and self._leader):
                rows.extend(self.encode(item))
            item = self._sub.get_nowait() if taken < SEND_BATCH else None
        return rows

    # --- in -----------------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await locks.connect(self.settings, f"waystation-{self.worker}-bus-in")
                await conn.add_listener(BUS_CHANNEL, self._on_notify)
                self.listening = True
                readings = False
                while True:
                    if self._leader != readings:
                        if self._leader:
                            await conn.add_listener(READINGS_CHANNEL, self._on_notify)
                        else:
                            await conn.remove_listener(READINGS_CHANNEL, self._on_notify)
                        readings = self._leader
                    self._leader_changed.clear()
                    try:
                        await asyncio.wait_for(self._leader_changed.wait(), CHECK_SECONDS)
                    except TimeoutError:
                        if not await locks.alive(conn):
                            raise ConnectionError("bus listener connection lost") from None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus bridge listener: %s; reconnecting", exc)
            finally:
                self.listening = False
                await locks.close(conn)
            await asyncio.sleep(1.0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            msg = orjson.loads(payload)
            if msg["w"] == self.worker:
                return  # our own, already published here
            ev = Event(msg["t"], msg["d"], msg["s"], ts=float(msg["ts"]), origin=str(msg["w"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignored a malformed bridged bus event")
            return
        self.received += 1
        self.bus.publish(ev)
