"""`GET /api/v1/log` (filtered, newest first) and `POST /api/v1/log` (a manual note)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.devices import service as devices
from waystation.errors import DeviceNotFound, StationNotFound
from waystation.oplog import service
from waystation.oplog.schemas import SOURCE_PATTERN, Level, LogEntryOut, NoteCreate
from waystation.station import service as stations

router = APIRouter(tags=["operations log"])


@router.get("/log")
async def list_log(
    level: Level | None = Query(
        default=None, description="least severity: warning lists warnings and errors"
    ),
    source: str | None = Query(default=None, pattern=SOURCE_PATTERN),
    device_id: str | None = Query(default=None, max_length=64),
    station_id: str | None = Query(default=None, max_length=32),
    since: datetime | None = Query(default=None, description="ISO 8601, inclusive"),
    until: datetime | None = Query(default=None, description="ISO 8601, exclusive"),
    q: str | None = Query(default=None, min_length=1, max_length=200, description="part of the message"),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Newest first, only from the caller's stations (installation-wide entries need an installation role)."""
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_entries(
            session,
            limit=limit,
            cursor=cursor,
            level=level,
            source=source,
            device_id=device_id,
            station_id=station_id,
            since=since,
            until=until,
            q=q,
            visible_stations=principal.visible_stations,
        )
        return {
            "items": [service.entry_out(r).model_dump(mode="json") for r in rows],
            "next_cursor": next_cursor,
        }


@router.post("/log", response_model=LogEntryOut, status_code=201)
async def write_note(
    body: NoteCreate,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> LogEntryOut:
    """A note from a person ("replaced the filter in zone 2"), stored with source `user`."""
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "member")
    async with ctx.db.session() as session:
        await stations.get_station(session, station_id)  # an installation admin may name any id
        related: dict[str, Any] = {}
        if body.device_id is not None:
            device = await devices.get_device(session, body.device_id)
            if device.station_id != station_id:
                # The same answer as for a device that does not exist: no probing other stations.
                raise DeviceNotFound(f"No device {body.device_id!r}.")
            related["device_id"] = device.id
        entry = await service.write_entry(
            session,
            body.level,
            "user",
            body.message,
            related=related,
            station_id=station_id,
            actor=principal.actor,
        )
        audit.record(
            session,
            actor=principal.actor,
            action="log.note",
            target=f"log:{entry.id}",
            summary=f"wrote a {body.level} note",
            ip=client_ip(request),
            station_id=station_id,
        )
        return service.entry_out(entry)
