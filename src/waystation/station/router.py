"""HTTP routes for stations and their members."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth import service as auth_service
from waystation.auth.deps import check_station, client_ip, get_ctx, require, require_global
from waystation.auth.models import User
from waystation.auth.roles import Principal, Role, role_at_least
from waystation.context import AppContext
from waystation.errors import InsufficientRole, MemberNotFound, StationNotFound, UserNotFound
from waystation.security.params import NameKey, StationKey
from waystation.station import service
from waystation.station.models import Station, StationMember

router = APIRouter(tags=["station"])


class StationOut(BaseModel):
    id: str
    name: str
    is_default: bool
    created_at: datetime


class StationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    role: Role


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class MemberOut(BaseModel):
    station_id: str
    user_id: int
    username: str
    role: str
    created_at: datetime


def station_out(station: Station) -> StationOut:
    return StationOut(
        id=station.id, name=station.name, is_default=station.is_default, created_at=station.created_at
    )


def member_out(member: StationMember, username: str) -> MemberOut:
    return MemberOut(
        station_id=member.station_id,
        user_id=member.user_id,
        username=username,
        role=member.role,
        created_at=member.created_at,
    )


def _not_found(station_id: str) -> StationNotFound:
    return StationNotFound(f"No station {station_id!r}.")


@router.get("/station", response_model=StationOut)
async def default_station(
    principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> StationOut:
    async with ctx.db.session() as session:
        station = await service.get_default_station(session)
        check_station(principal, station.id, _not_found(station.id))
        return station_out(station)


@router.get("/stations", response_model=dict[str, list[StationOut]])
async def list_stations(
    principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    visible = principal.visible_stations
    async with ctx.db.session() as session:
        stations = await service.list_stations(session)
        return {"items": [station_out(s) for s in stations if visible is None or s.id in visible]}


@router.post("/stations", response_model=StationOut, status_code=201)
async def create_station(
    body: StationCreate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> StationOut:
    """A new station; a user who creates it becomes its first owner. Only installation owners and admins
    and the station agent get here (API tokens hold no installation-wide role). The agent is no user: its
    stations start without members and the installation's owners and admins manage them."""
    owner = principal.id if principal.kind == "user" and isinstance(principal.id, int) else None
    async with ctx.db.session() as session:
        station = await service.create_station(session, body.name, owner)
        audit.record(
            session,
            actor=principal.actor,
            action="station.create",
            target=f"station:{station.id}",
            summary=f"created station {station.name!r}",
            ip=client_ip(request),
            station_id=station.id,
        )
        return station_out(station)


@router.get("/stations/{station_id}", response_model=StationOut)
async def get_station(
    station_id: StationKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> StationOut:
    check_station(principal, station_id, _not_found(station_id))
    async with ctx.db.session() as session:
        return station_out(await service.get_station(session, station_id))


# --- members ---------------------------------------------------------------------------------------


@router.get("/stations/{station_id}/members", response_model=dict[str, list[MemberOut]])
async def list_members(
    station_id: StationKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    check_station(principal, station_id, _not_found(station_id), needed="admin")
    async with ctx.db.session() as session:
        await service.get_station(session, station_id)
        return {"items": [member_out(m, name) for m, name in await service.list_members(session, station_id)]}


@router.post("/stations/{station_id}/members", response_model=MemberOut, status_code=201)
async def add_member(
    station_id: StationKey,
    body: MemberIn,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MemberOut:
    """Add a user to the station (or change their role there). Station owners and admins manage members;
    only an owner makes owners."""
    _check_manager(principal, station_id, body.role)
    async with ctx.db.session() as session:
        await service.get_station(session, station_id)
        user = await auth_service.get_user(session, body.username)
        current = await service.memberships_of(session, user.id)
        if station_id in current:
            # Changing an existing member's role: the same rank rules as PATCH (their current role counts).
            _check_manager(principal, station_id, current[station_id])
        member = await service.set_member(session, station_id, user.id, body.role)
        _audit_member(session, principal, request, station_id, f"{user.username} is now {body.role}")
        return member_out(member, user.username)


@router.patch("/stations/{station_id}/members/{username}", response_model=MemberOut)
async def update_member(
    station_id: StationKey,
    username: NameKey,
    body: MemberUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MemberOut:
    _check_manager(principal, station_id, body.role)
    async with ctx.db.session() as session:
        user = await _member_user(session, username)
        current = await service.get_member(session, station_id, user.id)
        _check_manager(principal, station_id, current.role)
        member = await service.set_member(session, station_id, user.id, body.role)
        _audit_member(session, principal, request, station_id, f"{username} is now {body.role}")
        return member_out(member, username)


@router.delete("/stations/{station_id}/members/{username}", status_code=204)
async def remove_member(
    station_id: StationKey,
    username: NameKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    check_station(principal, station_id, _not_found(station_id), needed="admin")
    async with ctx.db.session() as session:
        user = await _member_user(session, username)
        current = await service.get_member(session, station_id, user.id)
        _check_manager(principal, station_id, current.role)
        await service.remove_member(session, station_id, user.id)
        _audit_member(session, principal, request, station_id, f"removed {username}")
    return Response(status_code=204)


def _check_manager(principal: Principal, station_id: str, role: str) -> None:
    check_station(principal, station_id, _not_found(station_id), needed="admin")
    mine = principal.role_at(station_id) or "viewer"
    if role == "owner" and mine != "owner":
        raise InsufficientRole("Only an owner can make, change or remove owners.")
    if not role_at_least(mine, role):
        raise InsufficientRole("You cannot manage a member ranked above you.")


async def _member_user(session: AsyncSession, username: str) -> User:
    try:
        return await auth_service.get_user(session, username)
    except UserNotFound as exc:
        raise MemberNotFound("That user is not a member of this station.") from exc


def _audit_member(
    session: Any, principal: Principal, request: Request, station_id: str, summary: str
) -> None:
    audit.record(
        session,
        actor=principal.actor,
        action="station.member",
        target=f"station:{station_id}",
        summary=summary,
        ip=client_ip(request),
        station_id=station_id,
    )
