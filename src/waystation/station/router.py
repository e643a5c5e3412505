"""HTTP routes for stations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from waystation.auth.deps import get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.station import service
from waystation.station.models import Station

router = APIRouter(tags=["station"])


class StationOut(BaseModel):
    id: str
    name: str
    is_default: bool
    created_at: datetime


def station_out(station: Station) -> StationOut:
    return StationOut(
        id=station.id, name=station.name, is_default=station.is_default, created_at=station.created_at
    )


@router.get("/station", response_model=StationOut)
async def default_station(
    _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> StationOut:
    async with ctx.db.session() as session:
        return station_out(await service.get_default_station(session))


@router.get("/stations", response_model=dict[str, list[StationOut]])
async def list_stations(
    _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        return {"items": [station_out(s) for s in await service.list_stations(session)]}
