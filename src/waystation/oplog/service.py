"""Writing, listing and purging operations-log entries; other slices call `write_entry`."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.db import emit, utcnow
from waystation.devices.service import decode_cursor, encode_cursor
from waystation.errors import BadRequest, InvalidTimeRange
from waystation.oplog.models import LogEntry
from waystation.oplog.schemas import LEVELS, MAX_MESSAGE_CHARS, SOURCE_PATTERN, LogEntryOut
from waystation.security.params import MAX_ROW_ID

_SOURCE_RE = re.compile(SOURCE_PATTERN)


def entry_out(entry: LogEntry) -> LogEntryOut:
    return LogEntryOut(
        id=entry.id,
        ts=entry.ts,
        level=entry.level,  # only LEVELS are ever written
        source=entry.source,
        message=entry.message,
        related=entry.related or {},
        station_id=entry.station_id,
        actor=entry.actor,
    )


async def write_entry(
    session: AsyncSession,
    level: str,
    source: str,
    message: str,
    *,
    related: dict[str, Any] | None = None,
    station_id: str | None = None,
    ts: datetime | None = None,
    actor: str | None = None,
) -> LogEntry:
    """Add one entry to the operations log inside the caller's unit of work, and queue a `log.entry`
    bus event that goes out when that unit commits.

    - `level`: "debug", "info", "warning" or "error".
    - `source`: who speaks, a short lowercase word: "rule", "ota", "device", "system", "user", …
    - `message`: one human sentence; longer than 2,000 characters is cut. Never put secrets here: every
      member of the station reads it.
    - `related`: ids the entry is about, e.g. {"device_id": "climate-1", "rule_id": 4, "ota_job_id": 9}.
      `device_id` makes the entry show up under `GET /api/v1/log?device_id=`.
    - `station_id`: the station it concerns; None for installation-wide entries (only installation
      owners and admins see those).
    - `ts`: when it happened (timezone-aware), now by default; `actor`: who wrote a manual note.

    A wrong level or source is a programming error and raises ValueError. Returns the flushed row.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if not _SOURCE_RE.fullmatch(source):
        raise ValueError(f"log source must match {SOURCE_PATTERN}, not {source!r}")
    related = dict(related or {})
    device_id = related.get("device_id")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    entry = LogEntry(
        ts=ts or utcnow(),
        level=level,
        source=source,
        message=message,
        related=related,
        device_id=str(device_id)[:64] if device_id is not None else None,
        station_id=station_id,
        actor=actor,
    )
    session.add(entry)
    await session.flush()  # the id goes into the event, so live views can de-duplicate against a refetch
    emit(session, "log.entry", entry_out(entry).model_dump(mode="json"), station_id)
    return entry


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _cursor(entry: LogEntry) -> str:
    # Integer microseconds, not float seconds: the next page must resume at exactly this timestamp.
    return encode_cursor(str((entry.ts - _EPOCH) // _US), str(entry.id))


def _uncursor(cursor: str) -> tuple[datetime, int]:
    ts_us, entry_id = decode_cursor(cursor, 2)
    try:
        ts, row_id = _EPOCH + int(ts_us) * _US, int(entry_id)
    except (ValueError, OverflowError) as exc:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.") from exc
    if not 0 <= row_id <= MAX_ROW_ID:  # beyond the id column's range the driver would fail
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.")
    return ts, row_id


async def list_entries(
    session: AsyncSession,
    *,
    limit: int = 50,
    cursor: str | None = None,
    level: str | None = None,
    source: str | None = None,
    device_id: str | None = None,
    station_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: str | None = None,
    visible_stations: Collection[str] | None = None,
) -> tuple[Sequence[LogEntry], str | None]:
    """Newest first. `level` is the least severity shown ("warning" lists warnings and errors); `since`
    is inclusive, `until` exclusive; `q` matches a part of the message, ignoring case."""
    if since is not None and until is not None and _aware(since) >= _aware(until):
        raise InvalidTimeRange("'since' must be before 'until'.")
    query = select(LogEntry).order_by(LogEntry.ts.desc(), LogEntry.id.desc()).limit(limit + 1)
    if visible_stations is not None:
        query = query.where(LogEntry.station_id.in_(list(visible_stations)))
    if station_id:
        query = query.where(LogEntry.station_id == station_id)
    if level:
        query = query.where(LogEntry.level.in_(LEVELS[LEVELS.index(level) :]))
    if source:
        query = query.where(LogEntry.source == source)
    if device_id:
        query = query.where(LogEntry.device_id == device_id)
    if since is not None:
        query = query.where(LogEntry.ts >= _aware(since))
    if until is not None:
        query = query.where(LogEntry.ts < _aware(until))
    if q:
        query = query.where(LogEntry.message.ilike(f"%{_escape_like(q)}%", escape="\\"))
    if cursor:
        ts, entry_id = _uncursor(cursor)
        query = query.where(or_(LogEntry.ts < ts, (LogEntry.ts == ts) & (LogEntry.id < entry_id)))
    rows = list((await session.scalars(query)).all())
    next_cursor = _cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def purge_batch(session: AsyncSession, cutoff: datetime, batch: int) -> int:
    """Delete at most `batch` of the oldest entries older than `cutoff`; returns how many went."""
    oldest = (
        select(LogEntry.id).where(LogEntry.ts < cutoff).order_by(LogEntry.ts).limit(batch).scalar_subquery()
    )
    result = await session.execute(delete(LogEntry).where(LogEntry.id.in_(oldest)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
