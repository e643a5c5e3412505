"""Recording and listing audit entries. Summaries never carry secrets."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit.models import AuditEntry
from waystation.errors import BadRequest


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
        return int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not valid.") from exc


async def list_entries(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> tuple[Sequence[AuditEntry], str | None]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(AuditEntry.id < _decode_cursor(cursor))
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
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
    }
