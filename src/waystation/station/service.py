"""The default station and station lookups."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import User
from waystation.auth.roles import GLOBAL_ROLES
from waystation.errors import LastOwner, MemberNotFound, StationNotFound
from waystation.station.models import Setting, Station, StationMember

# Settings key marking the one-time membership backfill as done.
BACKFILL_DONE_KEY = "memberships_backfilled"


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


# --- members -----------------------------------------------------------------------------------------


async def memberships_of(session: AsyncSession, user_id: int) -> dict[str, str]:
    rows = await session.execute(
        select(StationMember.station_id, StationMember.role).where(StationMember.user_id == user_id)
    )
    return {station_id: role for station_id, role in rows}


async def create_station(session: AsyncSession, name: str, owner_user_id: int | None) -> Station:
    """A new station. A user who creates it becomes its first owner; without one (the station agent,
    which is no user) it starts with no members, and the installation's owners and admins manage it
    through their installation-wide role until someone is made its owner."""
    station = Station(id=new_station_id(), name=name, is_default=False)
    session.add(station)
    await session.flush()
    if owner_user_id is not None:
        session.add(StationMember(station_id=station.id, user_id=owner_user_id, role="owner"))
        await session.flush()
    return station


async def list_members(session: AsyncSession, station_id: str) -> Sequence[tuple[StationMember, str]]:
    rows = await session.execute(
        select(StationMember, User.username)
        .join(User, User.id == StationMember.user_id)
        .where(StationMember.station_id == station_id)
        .order_by(User.username)
    )
    return [(member, username) for member, username in rows.all()]


async def get_member(session: AsyncSession, station_id: str, user_id: int) -> StationMember:
    member = await session.get(StationMember, (station_id, user_id))
    if member is None:
        raise MemberNotFound("That user is not a member of this station.")
    return member


async def set_member(session: AsyncSession, station_id: str, user_id: int, role: str) -> StationMember:
    """Add the user to the station with `role`, or change their role there."""
    member = await session.get(StationMember, (station_id, user_id))
    if member is None:
        member = StationMember(station_id=station_id, user_id=user_id, role=role)
        session.add(member)
    else:
        if member.role == "owner" and role != "owner":
            await _keep_an_owner(session, station_id, user_id)
        member.role = role
    await session.flush()
    return member


async def remove_member(session: AsyncSession, station_id: str, user_id: int) -> StationMember:
    member = await get_member(session, station_id, user_id)
    if member.role == "owner":
        await _keep_an_owner(session, station_id, user_id)
    await session.delete(member)
    return member


async def _keep_an_owner(session: AsyncSession, station_id: str, leaving_user_id: int) -> None:
    others = await session.scalar(
        select(func.count())
        .select_from(StationMember)
        .where(
            StationMember.station_id == station_id,
            StationMember.role == "owner",
            StationMember.user_id != leaving_user_id,
        )
    )
    if not others:
        raise LastOwner("This is the station's last owner; make someone else owner first.")


async def backfill_memberships(session: AsyncSession, default_station_id: str) -> None:
    """Once per installation (at the first start with station members): users from before stations had
    members get the default station with their installation role, and the first global owner becomes its
    owner. Later removals from a station stick: this never runs again."""
    if await session.get(Setting, BACKFILL_DONE_KEY) is not None:
        return
    owner_exists = await session.scalar(
        select(StationMember.user_id).where(
            StationMember.station_id == default_station_id, StationMember.role == "owner"
        )
    )
    members = set((await session.execute(select(StationMember.user_id))).scalars())
    for user_id, role in (await session.execute(select(User.id, User.role).order_by(User.id))).all():
        if user_id in members:
            continue
        if role == "owner" and owner_exists is None:
            session.add(StationMember(station_id=default_station_id, user_id=user_id, role="owner"))
            owner_exists = user_id
        elif role not in GLOBAL_ROLES:
            session.add(StationMember(station_id=default_station_id, user_id=user_id, role=role))
    session.add(Setting(key=BACKFILL_DONE_KEY, value=True))
    await session.flush()


async def join_default_station(session: AsyncSession, user_id: int, role: str) -> None:
    """A new account (or an admin demoted to member or viewer) without any station joins the default
    station with its installation role; a new owner becomes an owner there if it has none."""
    default = await session.scalar(select(Station.id).where(Station.is_default.is_(True)))
    if default is None or await memberships_of(session, user_id):
        return
    if role in GLOBAL_ROLES:
        if role == "owner" and not await session.scalar(
            select(StationMember.user_id).where(
                StationMember.station_id == default, StationMember.role == "owner"
            )
        ):
            session.add(StationMember(station_id=default, user_id=user_id, role="owner"))
    else:
        session.add(StationMember(station_id=default, user_id=user_id, role=role))
    await session.flush()
