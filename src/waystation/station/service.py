"""The default station and station lookups."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.errors import StationNotFound
from waystation.station.models import Station


def new_station_id() -> str:
    return uuid.uuid4().hex[:12]


async def ensure_default_station(session: AsyncSession, name: str = "My station") -> Station:
    station = await session.scalar(select(Station).where(Station.is_default.is_(True)))
    if station is None:
        station = Station(id=new_station_id(), name=name, is_default=True)
        session.add(station)
        await session.flush()
    return station


async def get_default_station(session: AsyncSession) -> Station:
    station = await session.scalar(select(Station).where(Station.is_default.is_(True)))
    if station is None:
        raise StationNotFound("The station has not been initialised yet.")
    return station


async def get_station(session: AsyncSession, station_id: str) -> Station:
    station = await session.get(Station, station_id)
    if station is None:
        raise StationNotFound(f"No station {station_id!r}.")
    return station


async def list_stations(session: AsyncSession) -> Sequence[Station]:
    return (await session.scalars(select(Station).order_by(Station.created_at))).all()
