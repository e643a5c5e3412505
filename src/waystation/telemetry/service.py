"""Telemetry queries and use cases: channels, raw and bucketed datapoints, latest values, experiments."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.db import Database, emit
from waystation.errors import (
    BadRequest,
    ChannelNotFound,
    ExperimentNotFound,
    ExperimentRunning,
    ExperimentStopped,
    InvalidTimeRange,
)
from waystation.station import service as stations
from waystation.telemetry.ingest import from_us, to_us
from waystation.telemetry.models import Channel, Datapoint, Experiment, Rollup1h, Rollup1m
from waystation.telemetry.schemas import ChannelOut, ExperimentOut

BUCKETS = {"1m": 60, "1h": 3600, "1d": 86400}
MAX_BUCKETS = 5000  # points one bucketed query may return


def channel_out(channel: Channel) -> ChannelOut:
    return ChannelOut(
        id=channel.id,
        kind=channel.kind,
        station_id=channel.station_id,
        source_id=channel.source_id,
        key=channel.key,
        unit=channel.unit,
        last_value=channel.last_value,
        last_ts=from_us(channel.last_ts) if channel.last_ts is not None else None,
        raw_retention_days=channel.raw_retention_days,
        rollup_1m_retention_days=channel.rollup_1m_retention_days,
        rollup_1h_retention_days=channel.rollup_1h_retention_days,
    )


def experiment_out(exp: Experiment) -> ExperimentOut:
    return ExperimentOut(
        id=exp.id,
        station_id=exp.station_id,
        name=exp.name,
        notes=exp.notes,
        started_at=exp.started_at,
        stopped_at=exp.stopped_at,
        running=exp.stopped_at is None,
        created_by=exp.created_by,
    )


# --- channels ------------------------------------------------------------------------------------


async def list_channels(
    session: AsyncSession,
    *,
    device_id: str | None = None,
    kind: str | None = None,
    station_id: str | None = None,
    visible_stations: Collection[str] | None = None,
) -> Sequence[Channel]:
    query = select(Channel).order_by(Channel.id)
    if visible_stations is not None:
        query = query.where(Channel.station_id.in_(list(visible_stations)))
    if device_id:
        query = query.where(Channel.kind == "device", Channel.source_id == device_id)
    if kind:
        query = query.where(Channel.kind == kind)
    if station_id:
        query = query.where(Channel.station_id == station_id)
    return (await session.scalars(query)).all()


async def visible_channel_ids(
    session: AsyncSession, channel_ids: list[str], visible_stations: Collection[str] | None
) -> list[str]:
    """The ids among `channel_ids` whose station the caller may see."""
    if visible_stations is None or not channel_ids:
        return channel_ids
    rows = await session.scalars(
        select(Channel.id).where(Channel.id.in_(channel_ids), Channel.station_id.in_(list(visible_stations)))
    )
    seen = set(rows)
    return [c for c in channel_ids if c in seen]


async def get_channel(session: AsyncSession, channel_id: str) -> Channel:
    channel = await session.scalar(select(Channel).where(Channel.id == channel_id))
    if channel is None:
        raise ChannelNotFound(f"No channel {channel_id!r}.")
    return channel


async def delete_channels_of(session: AsyncSession, kind: str, source_id: str) -> list[str]:
    """Remove a source's channels and (by cascade) their data; returns the ids removed."""
    ids = list(
        (
            await session.scalars(
                select(Channel.id).where(Channel.kind == kind, Channel.source_id == source_id)
            )
        ).all()
    )
    if ids:
        pks = select(Channel.pk).where(Channel.kind == kind, Channel.source_id == source_id)
        # Explicit deletes: SQLite only cascades when foreign keys are on for that connection.
        for model in (Datapoint, Rollup1m, Rollup1h):
            await session.execute(delete(model).where(model.channel_pk.in_(pks)))
        await session.execute(delete(Channel).where(Channel.kind == kind, Channel.source_id == source_id))
    return ids


# --- time ranges -----------------------------------------------------------------------------------


def resolve_range(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[int, int]:
    """[from, to) in epoch µs; naive datetimes are taken as UTC."""
    now = datetime.now(UTC)
    try:
        end = _aware(end) if end else now
        start = _aware(start) if start else end - default
    except OverflowError as exc:  # e.g. to=0001-01-01 minus the default span
        raise InvalidTimeRange("The time range lies outside the years 1 to 9999.") from exc
    if start >= end:
        raise InvalidTimeRange("'from' must be before 'to'.")
    return to_us(start), to_us(end)


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def pick_bucket(bucket: str, span_us: int) -> int:
    if bucket != "auto":
        return BUCKETS[bucket]
    span = span_us / 1_000_000
    if span <= 6 * 3600:
        return 60
    if span <= 31 * 86400:
        return 3600
    return 86400


# --- datapoints ------------------------------------------------------------------------------------


def _cursor(ts: int) -> str:
    return base64.urlsafe_b64encode(f"ts:{ts}".encode()).decode()


def _uncursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
        if not raw.startswith("ts:") or _cursor(int(raw[3:])) != cursor or abs(int(raw[3:])) > 2**62:
            raise ValueError(cursor)
        return int(raw[3:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.") from exc


async def raw_datapoints(
    session: AsyncSession,
    channel: Channel,
    start_us: int,
    end_us: int,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Oldest first ("newest last"); the cursor continues after the last row returned."""
    after = _uncursor(cursor) if cursor else None
    query = (
        select(Datapoint.ts, Datapoint.value)
        .where(Datapoint.channel_pk == channel.pk, Datapoint.ts >= start_us, Datapoint.ts < end_us)
        .order_by(Datapoint.ts)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(Datapoint.ts > after)
    rows = (await session.execute(query)).all()
    items = [{"ts": from_us(ts).isoformat(), "value": value} for ts, value in rows[:limit]]
    next_cursor = _cursor(rows[limit - 1][0]) if len(rows) > limit else None
    return items, next_cursor


async def bucketed_datapoints(
    session: AsyncSession,
    channel: Channel,
    start_us: int,
    end_us: int,
    bucket_seconds: int,
) -> list[dict[str, Any]]:
    """min/max/avg/count per bucket, from the 1-minute or 1-hour rollups."""
    if (end_us - start_us) / 1_000_000 / bucket_seconds > MAX_BUCKETS:
        raise InvalidTimeRange(f"That range has more than {MAX_BUCKETS} buckets; use a larger bucket.")
    model: type[Rollup1m] | type[Rollup1h] = Rollup1m if bucket_seconds < 3600 else Rollup1h
    width = 60 if model is Rollup1m else 3600
    start_s = (start_us // 1_000_000) // bucket_seconds * bucket_seconds
    end_s = end_us // 1_000_000
    # Integer arithmetic (SQLite may lack floor()); buckets are aligned to the epoch, in UTC.
    key = model.bucket - model.bucket % bucket_seconds if bucket_seconds != width else model.bucket
    query = (
        select(
            key.label("b"),
            func.min(model.min),
            func.max(model.max),
            func.sum(model.sum),
            func.sum(model.count),
        )
        .where(model.channel_pk == channel.pk, model.bucket >= start_s, model.bucket < end_s)
        .group_by(key)
        .order_by(key)
    )
    items = []
    for b, lo, hi, total, count in (await session.execute(query)).all():
        count = int(count or 0)
        if count == 0:
            continue
        items.append(
            {
                "ts": datetime.fromtimestamp(int(b), UTC).isoformat(),
                "min": lo,
                "max": hi,
                "avg": total / count,
                "count": count,
            }
        )
    return items


async def latest_values(session: AsyncSession, channel_ids: list[str]) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(Channel.id, Channel.last_ts, Channel.last_value).where(Channel.id.in_(channel_ids))
    )
    return [
        {"channel": cid, "ts": from_us(ts).isoformat() if ts is not None else None, "value": value}
        for cid, ts, value in sorted(rows.all())
    ]


# --- experiments -------------------------------------------------------------------------------------


async def start_experiment(
    session: AsyncSession,
    *,
    station_id: str,
    name: str,
    notes: str,
    actor: str,
) -> Experiment:
    await stations.get_station(session, station_id)  # 404, not a foreign-key failure, for an unknown id
    running = await session.scalar(
        select(Experiment).where(Experiment.station_id == station_id, Experiment.stopped_at.is_(None))
    )
    if running is not None:
        raise ExperimentRunning(
            f"Experiment {running.id} ({running.name!r}) is still running; stop it first."
        )
    exp = Experiment(
        station_id=station_id, name=name, notes=notes, created_by=actor, started_at=datetime.now(UTC)
    )
    session.add(exp)
    await session.flush()
    emit(session, "experiment.started", {"experiment_id": exp.id, "name": name}, station_id)
    return exp


async def get_experiment(session: AsyncSession, experiment_id: int) -> Experiment:
    exp = await session.get(Experiment, experiment_id)
    if exp is None:
        raise ExperimentNotFound(f"No experiment {experiment_id}.")
    return exp


async def stop_experiment(session: AsyncSession, experiment_id: int) -> Experiment:
    exp = await get_experiment(session, experiment_id)
    if exp.stopped_at is not None:
        raise ExperimentStopped(f"Experiment {exp.id} stopped at {exp.stopped_at.isoformat()}.")
    exp.stopped_at = datetime.now(UTC)
    emit(session, "experiment.stopped", {"experiment_id": exp.id, "name": exp.name}, exp.station_id)
    return exp


async def list_experiments(session: AsyncSession, station_id: str | None = None) -> Sequence[Experiment]:
    query = select(Experiment).order_by(Experiment.id.desc())
    if station_id:
        query = query.where(Experiment.station_id == station_id)
    return (await session.scalars(query)).all()


async def export_csv_rows(db: Database, experiment_id: int) -> AsyncIterator[str]:
    """CSV lines of every datapoint of an experiment, streamed from the database in chunks."""
    yield "channel,ts,value\r\n"
    async with db.session() as session:
        result = await session.stream(
            select(Channel.id, Datapoint.ts, Datapoint.value)
            .join(Channel, Channel.pk == Datapoint.channel_pk)
            .where(Datapoint.experiment_id == experiment_id)
            .order_by(Datapoint.ts, Channel.id)
            .execution_options(yield_per=2000)
        )
        async for partition in result.partitions(2000):
            yield "".join(
                f"{_csv_field(cid)},{from_us(ts).isoformat()},{value!r}\r\n" for cid, ts, value in partition
            )


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value
