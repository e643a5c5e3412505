"""The ingest hot path, top to bottom.

    MQTT message (parsed by its slice) → `submit()` → bounded queue → batcher (flush at N rows or T ms)
    → one transaction: datapoints bulk INSERT … ON CONFLICT DO NOTHING RETURNING (idempotent on
    (channel, ts)), rollups upsert from exactly the rows inserted, latest values → commit
    → release the QoS 1 acks → `telemetry.batch` bus events and the latest-value cache.

When the queue holds `ingest_max_queue_rows` the MQTT link is paused (the broker keeps the messages)
and resumed below half of that, so memory stays bounded and nothing is dropped. A failed write is
retried with backoff, never dropped: its messages stay unacknowledged until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database, in_list
from waystation.errors import database_fault
from waystation.mqtt.topics import AckToken
from waystation.status.metrics import Metrics
from waystation.telemetry.models import Channel, Datapoint, Rollup1h, Rollup1m

log = logging.getLogger(__name__)

# Internal bus event (never leaves the process): every reading of a committed batch, for the rule engine.
READINGS_EVENT = "_telemetry.readings"

# Units for well-known keys; anything else is unitless until someone sets it.
KNOWN_UNITS = {
    "temperature": "°C",
    "humidity": "%",
    "brightness": "%",
    "pressure": "hPa",
    "co2": "ppm",
    "battery": "%",
    "voltage": "V",
    "current": "A",
    "power": "W",
    "energy": "kWh",
}

Row = tuple[str, int, float]  # channel id, ts (epoch µs), value


@dataclass(slots=True)
class ChannelInfo:
    kind: str
    station_id: str | None
    source_id: str
    key: str


@dataclass(slots=True)
class Item:
    """One message's readings and its pending acknowledgement."""

    station_id: str | None
    rows: list[Row]
    token: AckToken | None
    received: float  # time.monotonic() when it arrived


def to_us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000)


def from_us(ts_us: int) -> datetime:
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC)


class IngestPipeline:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        metrics: Metrics,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.metrics = metrics
        self._pause, self._resume = pause, resume
        self._queue: deque[Item] = deque()
        self._queued_rows = 0
        self._paused = False
        self._has_items = asyncio.Event()
        self._enough = asyncio.Event()
        self._channel_pks: dict[str, int] = {}
        self._channel_ids: dict[int, str] = {}
        self._channel_station: dict[str, str | None] = {}
        self._new_channels: dict[str, ChannelInfo] = {}
        self._last_ts: dict[str, int] = {}  # per channel, so stamped readings never collide
        self.latest: dict[str, tuple[int, float]] = {}  # channel id → (ts µs, value)
        self.active_experiments: dict[str, int] = {}  # station id → running experiment id
        self.committed_rows = 0
        self.duplicate_rows = 0
        self.write_failures = 0

    # --- in -----------------------------------------------------------------------------------

    def submit(
        self,
        *,
        kind: str,
        station_id: str | None,
        source_id: str,
        values: dict[str, float],
        ts_us: int | None,
        token: AckToken | None,
    ) -> None:
        """Queue the numeric values of one message (called on the event loop, must stay cheap)."""
        now_us = time.time_ns() // 1000
        rows: list[Row] = []
        for key, value in values.items():
            if not key or len(key) > 64 or "/" in key:
                continue  # not a valid channel key; the callers validate, this keeps a bad one out of SQL
            channel_id = f"{kind}:{source_id}/{key}"
            self._note_channel(channel_id, kind, station_id, source_id, key)
            rows.append((channel_id, self._stamp(channel_id, now_us) if ts_us is None else ts_us, value))
        if not rows:
            return
        if token is not None:
            token.hold()
        self._queue.append(Item(station_id, rows, token, time.monotonic()))
        self._queued_rows += len(rows)
        self._has_items.set()
        if self._queued_rows >= self.settings.ingest_batch_rows:
            self._enough.set()
        if not self._paused and self._queued_rows >= self.settings.ingest_max_queue_rows:
            self._paused = True
            self.metrics.ingest_pauses.inc()
            self._pause()

    def _note_channel(
        self, channel_id: str, kind: str, station_id: str | None, source_id: str, key: str
    ) -> None:
        """Remember what a channel not yet in the database is, so the writer can create it."""
        if channel_id not in self._channel_pks and channel_id not in self._new_channels:
            self._new_channels[channel_id] = ChannelInfo(kind, station_id, source_id, key)
            self._channel_station[channel_id] = station_id

    def _stamp(self, channel_id: str, now_us: int) -> int:
        """A reading without its own time gets the arrival time, nudged so it stays unique per channel."""
        stamp = max(now_us, self._last_ts.get(channel_id, 0) + 1)
        self._last_ts[channel_id] = stamp
        return stamp

    async def write_items(
        self,
        items: list[tuple[str, float, datetime | None]],
        device_stations: dict[str, str],
        default_station: str,
    ) -> int:
        """Write (channel id, value, ts) items now, outside the queue (HTTP batch); returns rows stored."""
        batch: list[Item] = []
        now = time.monotonic()
        for channel_id, value, ts in items:
            kind, rest = channel_id.split(":", 1)
            source_id, key = rest.split("/", 1)
            station_id = (
                device_stations.get(source_id, default_station) if kind == "device" else default_station
            )
            self._note_channel(channel_id, kind, station_id, source_id, key)
            if ts is None:
                stamp = self._stamp(channel_id, time.time_ns() // 1000)
            else:
                stamp = to_us(ts if ts.tzinfo else ts.replace(tzinfo=UTC))
            batch.append(Item(station_id, [(channel_id, stamp, value)], None, now))
        inserted, latest = await self._write(batch)
        self.committed_rows += len(inserted)
        self.metrics.ingest_rows.inc(len(inserted))
        self._publish(latest, inserted)
        return len(inserted)

    @property
    def queue_rows(self) -> int:
        return self._queued_rows

    # --- batcher and writer --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self._next_batch_ready()
                await self._flush_once()
        except asyncio.CancelledError:
            # Shutdown: commit what is queued (so its messages are acknowledged), then stop.
            await asyncio.shield(self.drain())
            raise

    async def drain(self) -> None:
        while self._queue:
            await self._flush_once(retry=False)

    async def _next_batch_ready(self) -> None:
        await self._has_items.wait()
        if self._queued_rows < self.settings.ingest_batch_rows:
            age = time.monotonic() - self._queue[0].received
            remaining = self.settings.ingest_batch_ms / 1000.0 - age
            if remaining > 0:
                self._enough.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._enough.wait(), remaining)

    def _take(self) -> list[Item]:
        items: list[Item] = []
        rows = 0
        limit = self.settings.ingest_batch_rows
        while self._queue and rows < limit:
            item = self._queue.popleft()
            items.append(item)
            rows += len(item.rows)
        self._queued_rows -= rows
        if not self._queue:
            self._has_items.clear()
        self.metrics.ingest_queue_rows.set(self._queued_rows)
        return items

    def _give_back(self, items: list[Item]) -> None:
        self._queue.extendleft(reversed(items))
        self._queued_rows += sum(len(i.rows) for i in items)
        self._has_items.set()

    async def _flush_once(self, retry: bool = True) -> None:
        items = self._take()
        if not items:
            return
        started = time.monotonic()
        delay = 0.5
        while True:
            try:
                inserted, latest = await self._write(items)
                break
            except Exception as exc:
                self.write_failures += 1
                self.metrics.ingest_write_failures.inc()
                if not retry:
                    self._give_back(items)
                    raise
                # Name the cause an operator can act on (disk full, database down); the messages stay
                # unacknowledged at the broker meanwhile, so nothing is lost.
                fault = database_fault(exc)
                log.warning(
                    "telemetry write failed (%s%s); holding %d rows, retrying in %.1fs",
                    type(exc).__name__,
                    f": {fault.code}, {fault.detail}" if fault else "",
                    sum(len(i.rows) for i in items) + self._queued_rows,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        done = time.monotonic()
        rows = sum(len(i.rows) for i in items)
        stored = len(inserted)
        self.committed_rows += stored
        self.duplicate_rows += rows - stored
        self.metrics.ingest_rows.inc(stored)
        self.metrics.ingest_duplicates.inc(rows - stored)
        self.metrics.ingest_batch_rows.observe(rows)
        self.metrics.ingest_commit_seconds.observe(done - started)
        for item in items:
            self.metrics.ingest_latency_seconds.observe(done - item.received)
            if item.token is not None:
                item.token.release()
        self.metrics.ingest_messages.inc(len(items))
        if self._paused and self._queued_rows <= self.settings.ingest_max_queue_rows // 2:
            self._paused = False
            self._resume()
        self._publish(latest, inserted)

    async def _write(
        self, items: list[Item]
    ) -> tuple[list[tuple[int, int, float]], dict[str, tuple[int, float]]]:
        """Store a batch in one transaction; returns the rows actually inserted (channel pk, ts, value)
        and the latest reading per channel."""
        async with self.db.writer() as session:
            await self._resolve_channels(session, {cid for item in items for cid, _, _ in item.rows})
            pks = self._channel_pks
            active = self.active_experiments
            params = [
                {
                    "channel_pk": pks[cid],
                    "ts": ts,
                    "value": value,
                    "experiment_id": active.get(item.station_id) if item.station_id else None,
                }
                for item in items
                for cid, ts, value in item.rows
            ]
            inserted = await insert_datapoints(session, params)
            await upsert_rollups(session, inserted)
            latest = latest_per_channel(inserted)
            await update_latest(session, latest)
        ids = self._channel_ids
        return inserted, {ids[pk]: v for pk, v in latest.items() if pk in ids}

    async def _resolve_channels(self, session: AsyncSession, channel_ids: Iterable[str]) -> None:
        missing = [cid for cid in channel_ids if cid not in self._channel_pks]
        if not missing:
            return
        new = [
            {
                "id": cid,
                "kind": info.kind,
                "station_id": info.station_id,
                "source_id": info.source_id,
                "key": info.key,
                "unit": KNOWN_UNITS.get(info.key),
                "created_at": datetime.now(UTC),
            }
            for cid in missing
            if (info := self._new_channels.get(cid)) is not None
        ]
        if new:
            await session.execute(dialect_insert(session, Channel).on_conflict_do_nothing(), new)
        rows = await session.execute(select(Channel.id, Channel.pk).where(Channel.id.in_(in_list(missing))))
        for cid, pk in rows:
            self._remember(cid, pk)
            self._new_channels.pop(cid, None)

    def _remember(self, channel_id: str, pk: int) -> None:
        self._channel_pks[channel_id] = pk
        self._channel_ids[pk] = channel_id

    async def load(self) -> None:
        """Known channels, their latest values and the running experiments, from the database."""
        from waystation.telemetry.models import Experiment

        async with self.db.session() as session:
            rows = await session.execute(
                select(Channel.id, Channel.pk, Channel.station_id, Channel.last_ts, Channel.last_value)
            )
            for cid, pk, station_id, last_ts, last_value in rows:
                self._remember(cid, pk)
                self._channel_station[cid] = station_id
                if last_ts is not None and last_value is not None:
                    self.latest[cid] = (last_ts, last_value)
                    self._last_ts[cid] = last_ts
            running = await session.execute(
                select(Experiment.station_id, Experiment.id).where(Experiment.stopped_at.is_(None))
            )
            self.active_experiments = {sid: eid for sid, eid in running}

    def forget_channels(self, channel_ids: Iterable[str]) -> None:
        for cid in channel_ids:
            pk = self._channel_pks.pop(cid, None)
            if pk is not None:
                self._channel_ids.pop(pk, None)
            self._channel_station.pop(cid, None)
            self.latest.pop(cid, None)
            self._last_ts.pop(cid, None)

    def _publish(self, latest: dict[str, tuple[int, float]], inserted: list[tuple[int, int, float]]) -> None:
        if not latest:
            return
        if self.bus.wanted(READINGS_EVENT):
            self._publish_readings(inserted)
        by_station: dict[str | None, list[dict[str, Any]]] = {}
        for cid, (ts, value) in latest.items():
            known = self.latest.get(cid)
            if known is None or known[0] <= ts:
                self.latest[cid] = (ts, value)
            by_station.setdefault(self._channel_station.get(cid), []).append(
                {"channel": cid, "ts": from_us(ts).isoformat(), "value": value}
            )
        for station_id, items in by_station.items():
            self.bus.emit("telemetry.batch", {"count": len(items), "items": items}, station_id)

    def _publish_readings(self, inserted: list[tuple[int, int, float]]) -> None:
        """Every newly stored reading, oldest first, per station: `telemetry.batch` carries only the latest
        value per channel (enough for screens), but a rule must see a spike that a later value hides."""
        ids, stations = self._channel_ids, self._channel_station
        by_station: dict[str | None, list[tuple[str, int, float]]] = {}
        for pk, ts, value in sorted(inserted, key=lambda row: row[1]):
            cid = ids.get(pk)
            if cid is not None:
                by_station.setdefault(stations.get(cid), []).append((cid, ts, value))
        for station_id, readings in by_station.items():
            self.bus.emit(READINGS_EVENT, {"readings": readings}, station_id)


# --- SQL building blocks (dialect-aware) --------------------------------------------------------


def dialect_name(session: AsyncSession) -> str:
    return session.sync_session.get_bind().dialect.name


def dialect_insert(session: AsyncSession, model: Any) -> Any:
    return (pg_insert if dialect_name(session) == "postgresql" else sqlite_insert)(model.__table__)


# An executemany with RETURNING goes out as multi-row INSERTs whose SQL text depends on the row count, and
# SQLite keeps a compiled statement per distinct text and per connection (the driver caches 128; ~0.36 kB
# per row, 360 kB for 1,000 rows). Batches of every size from 1 to 2,000 rows so grew the SQLite heap
# (and fragmented malloc) for as long as new sizes came up. Power-of-two chunks: at most 10 texts, each
# under SQLAlchemy's own 1,000-row page (which would otherwise split a chunk into new texts again).
INSERT_CHUNK_ROWS = 512


def pow2_chunks(items: list[Any], largest: int) -> Iterable[list[Any]]:
    """`items` in chunks of `largest` rows, the rest in descending powers of two (`largest` is one)."""
    start, total, size = 0, len(items), largest
    while start < total:
        while size > total - start:
            size //= 2
        yield items[start : start + size]
        start += size


async def insert_datapoints(
    session: AsyncSession, params: list[dict[str, Any]]
) -> list[tuple[int, int, float]]:
    """Insert rows, skipping (channel, ts) pairs already stored; return exactly the rows inserted."""
    if not params:
        return []
    table = Datapoint.__table__
    stmt = (
        dialect_insert(session, Datapoint)
        .on_conflict_do_nothing()
        .returning(table.c.channel_pk, table.c.ts, table.c.value)
    )
    inserted: list[tuple[int, int, float]] = []
    for chunk in pow2_chunks(params, INSERT_CHUNK_ROWS):
        result = await session.execute(stmt, chunk)
        inserted.extend((row[0], row[1], row[2]) for row in result.all())
    return inserted


def _bucketize(rows: list[tuple[int, int, float]], seconds: int) -> list[dict[str, Any]]:
    agg: dict[tuple[int, int], list[float]] = {}
    width = seconds * 1_000_000
    for pk, ts, value in rows:
        key = (pk, (ts // width) * seconds)
        cur = agg.get(key)
        if cur is None:
            agg[key] = [value, value, value, 1]
        else:
            if value < cur[0]:
                cur[0] = value
            if value > cur[1]:
                cur[1] = value
            cur[2] += value
            cur[3] += 1
    return [
        {"channel_pk": pk, "bucket": bucket, "min": a[0], "max": a[1], "sum": a[2], "count": int(a[3])}
        for (pk, bucket), a in agg.items()
    ]


async def upsert_rollups(session: AsyncSession, rows: list[tuple[int, int, float]]) -> None:
    if not rows:
        return
    pg = dialect_name(session) == "postgresql"
    lower, upper = (func.least, func.greatest) if pg else (func.min, func.max)
    for model, seconds in ((Rollup1m, 60), (Rollup1h, 3600)):
        table = model.__table__
        ins = dialect_insert(session, model)
        stmt = ins.on_conflict_do_update(
            index_elements=[table.c.channel_pk, table.c.bucket],
            set_={
                "min": lower(table.c.min, ins.excluded.min),
                "max": upper(table.c.max, ins.excluded.max),
                "sum": table.c.sum + ins.excluded.sum,
                "count": table.c.count + ins.excluded.count,
            },
        )
        await session.execute(stmt, _bucketize(rows, seconds))


def latest_per_channel(rows: list[tuple[int, int, float]]) -> dict[int, tuple[int, float]]:
    latest: dict[int, tuple[int, float]] = {}
    for pk, ts, value in rows:
        cur = latest.get(pk)
        if cur is None or ts > cur[0]:
            latest[pk] = (ts, value)
    return latest


async def update_latest(session: AsyncSession, latest: dict[int, tuple[int, float]]) -> None:
    if not latest:
        return
    table = cast(Table, Channel.__table__)
    stmt = (
        update(table)
        .where(
            table.c.pk == bindparam("b_pk"),
            or_(table.c.last_ts.is_(None), table.c.last_ts < bindparam("b_ts")),
        )
        .values(last_value=bindparam("b_value"), last_ts=bindparam("b_ts"))
    )
    await session.execute(stmt, [{"b_pk": pk, "b_ts": ts, "b_value": v} for pk, (ts, v) in latest.items()])
