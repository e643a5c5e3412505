"""`GET /api/v1/audit` with filters and cursor paging."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from waystation.audit import service
from waystation.auth.deps import get_ctx, require
from waystation.auth.roles import Principal, role_at_least
from waystation.context import AppContext
from waystation.errors import InvalidTimeRange

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def list_audit(
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=100),
    actor: str | None = Query(default=None, max_length=120),
    action: str | None = Query(default=None, max_length=80),
    target: str | None = Query(default=None, max_length=200, description="a whole target: `device:lamp-1`"),
    target_type: str | None = Query(
        default=None, max_length=40, pattern=r"^[a-z][a-z0-9_]*$", description="`device`, `user`, `flow`, …"
    ),
    station_id: str | None = Query(default=None, max_length=32),
    since: datetime | None = Query(default=None, alias="from", description="included; ISO 8601"),
    until: datetime | None = Query(default=None, alias="to", description="excluded; ISO 8601"),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Newest first, every filter combined. Station admins see their stations' entries; installation
    admins see everything. Page with the `next_cursor` and the same filters."""
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise InvalidTimeRange("'from' must be before 'to'.")
    visible = principal.visible_stations
    if visible is not None:
        # Only stations where the caller is an admin, not merely a member.
        visible = frozenset(s for s in visible if role_at_least(principal.role_at(s) or "viewer", "admin"))
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_entries(
            session,
            limit=limit,
            cursor=cursor,
            actor=actor,
            action=action,
            target=target,
            target_type=target_type,
            station_id=station_id,
            since=since,
            until=until,
            stations=visible,
        )
        return {"items": [service.entry_to_dict(r) for r in rows], "next_cursor": next_cursor}


def _utc(ts: datetime | None) -> datetime | None:
    """Naive times are UTC."""
    if ts is None:
        return None
    try:
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+05:00
        raise InvalidTimeRange("The time lies outside the years 1 to 9999.") from exc
