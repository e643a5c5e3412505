"""Recording and listing audit entries. Summaries never carry secrets."""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit.models import AuditEntry
from waystation.errors import BadRequest

MAX_ROW_ID = 2**63 - 1


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    summary: str = "",
    ip: str | None = None,
    station_id: str | None = None,
) -> None:
    session.add(
        AuditEntry(actor=actor, action=action, target=target, summary=summary, ip=ip, station_id=station_id)
    )


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(str(entry_id).encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        value = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not valid.") from exc
    if not 0 < value <= MAX_ROW_ID:  # also keeps it within the database's integer range
        raise BadRequest("The cursor is not valid.")
    return value


async def list_entries(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    target_type: str | None = None,
    station_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    stations: Collection[str] | None = None,
) -> tuple[Sequence[AuditEntry], str | None]:
    """Newest first, every filter combined with AND. `target` is a whole target (`device:lamp-1`),
    `target_type` the part before its colon (`device`; also a bare target such as `cloud`); `since` is
    included, `until` excluded. `stations` limits the result to what the caller may see (None: all)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if stations is not None:
        query = query.where(AuditEntry.station_id.in_(list(stations)))
    if cursor:
        query = query.where(AuditEntry.id < _decode_cursor(cursor))
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    if target:
        query = query.where(AuditEntry.target == target)
    if target_type:
        prefix = AuditEntry.target.startswith(f"{target_type}:", autoescape=True)  # `_` is no wildcard
        query = query.where(or_(AuditEntry.target == target_type, prefix))
    if station_id:
        query = query.where(AuditEntry.station_id == station_id)
    if since is not None:
        query = query.where(AuditEntry.ts >= since)
    if until is not None:
        query = query.where(AuditEntry.ts < until)
    rows = list((await session.scalars(query)).all())
    next_cursor = _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "ts": entry.ts.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "summary": entry.summary,
        "ip": entry.ip,
        "station_id": entry.station_id,
    }
