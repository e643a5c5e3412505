"""Device use cases and queries: CRUD, events and command history."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.security import new_secret, sha256_hex
from waystation.db import emit
from waystation.devices.models import Command, Device, DeviceEvent, DeviceType
from waystation.devices.schemas import CommandOut, DeviceCreate, DeviceOut, DeviceUpdate, EventOut
from waystation.errors import BadRequest, CommandNotFound, DeviceExists, DeviceNotFound, DeviceTypeNotFound
from waystation.station import service as stations


def device_out(device: Device) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        station_id=device.station_id,
        type=device.type,
        name=device.name,
        zone=device.zone,
        status=device.status,
        last_seen=device.last_seen,
        firmware_version=device.firmware_version,
        chip=device.chip,
        state=device.state or {},
        enabled=device.enabled,
        created_at=device.created_at,
    )


def _public_params(action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Command parameters as shown to API callers: an OTA download link is a short-lived credential (its
    query string is the signature), so only its path is shown."""
    url = params.get("url")
    if action == "ota_update" and isinstance(url, str) and "?" in url:
        return {**params, "url": url.split("?", 1)[0] + "?…"}
    return params


def command_out(cmd: Command) -> CommandOut:
    return CommandOut(
        request_id=cmd.request_id,
        device_id=cmd.device_id,
        action=cmd.action,
        params=_public_params(cmd.action, cmd.params or {}),
        status=cmd.status,
        error=cmd.error,
        created_at=cmd.created_at,
        sent_at=cmd.sent_at,
        acked_at=cmd.acked_at,
        expires_at=cmd.expires_at,
    )


def event_out(ev: DeviceEvent) -> EventOut:
    return EventOut(id=ev.id, device_id=ev.device_id, ts=ev.ts, kind=ev.kind, data=ev.data or {})


def _summary(device: Device) -> dict[str, Any]:
    return {"device_id": device.id, "station_id": device.station_id, "type": device.type, "name": device.name}


# --- cursors (opaque to clients) ------------------------------------------------------------------


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("\x1f".join(parts).encode()).decode()


def decode_cursor(cursor: str, count: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.") from exc
    parts = raw.split("\x1f")
    # A cursor is only valid if it is exactly what we hand out (base64 decoding skips junk characters).
    if len(parts) != count or not all(parts) or encode_cursor(*parts) != cursor:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.")
    return parts


# --- device types -------------------------------------------------------------------------------


async def list_types(session: AsyncSession) -> Sequence[DeviceType]:
    return (await session.scalars(select(DeviceType).order_by(DeviceType.id))).all()


async def get_type(session: AsyncSession, type_id: str) -> DeviceType:
    device_type = await session.get(DeviceType, type_id)
    if device_type is None:
        known = ", ".join(t.id for t in await list_types(session))
        raise DeviceTypeNotFound(f"Unknown device type {type_id!r}; known types: {known}.")
    return device_type


# --- devices ------------------------------------------------------------------------------------


async def get_device(session: AsyncSession, device_id: str) -> Device:
    device = await session.get(Device, device_id)
    if device is None:
        raise DeviceNotFound(f"No device {device_id!r}.")
    return device


async def list_devices(
    session: AsyncSession,
    *,
    station_id: str | None = None,
    status: str | None = None,
    type_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    visible_stations: Collection[str] | None = None,
) -> tuple[Sequence[Device], str | None]:
    query = select(Device).order_by(Device.id).limit(limit + 1)
    if visible_stations is not None:
        query = query.where(Device.station_id.in_(list(visible_stations)))
    if station_id:
        query = query.where(Device.station_id == station_id)
    if status:
        query = query.where(Device.status == status)
    if type_id:
        query = query.where(Device.type == type_id)
    if cursor:
        (after,) = decode_cursor(cursor, 1)
        query = query.where(Device.id > after)
    rows = list((await session.scalars(query)).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


DEVICE_TOKEN_PREFIX = "wsd_"


def issue_device_token(device: Device) -> str:
    """A new HTTP token for the device (`X-Device-Token`); only its hash is kept."""
    token = new_secret(DEVICE_TOKEN_PREFIX)
    device.token_hash = sha256_hex(token)
    return token


async def create_device(session: AsyncSession, body: DeviceCreate, default_station_id: str) -> Device:
    await get_type(session, body.type)
    station_id = body.station_id or default_station_id
    await stations.get_station(session, station_id)
    device_id = body.id or f"{body.type}-{uuid.uuid4().hex[:8]}"
    if await session.get(Device, device_id) is not None:
        raise DeviceExists(f"A device with id {device_id!r} already exists.")
    now = datetime.now(UTC)
    device = Device(
        id=device_id,
        station_id=station_id,
        type=body.type,
        name=body.name or device_id,
        zone=body.zone,
        status="unknown",
        state={},
        created_at=now,
        updated_at=now,
    )
    session.add(device)
    await session.flush()
    emit(session, "device.created", _summary(device), station_id)
    return device


async def update_device(
    session: AsyncSession, device_id: str, body: DeviceUpdate
) -> tuple[Device, list[str]]:
    device = await get_device(session, device_id)
    changed = []
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field in {"name", "enabled"} and value is None:
            continue
        if getattr(device, field) != value:
            setattr(device, field, value)
            changed.append(field)
    if changed:
        device.updated_at = datetime.now(UTC)
        emit(session, "device.updated", {**_summary(device), "changed": changed}, device.station_id)
    return device, changed


async def delete_device(session: AsyncSession, device_id: str) -> Device:
    device = await get_device(session, device_id)
    await session.delete(device)
    emit(session, "device.deleted", _summary(device), device.station_id)
    return device


async def list_events(
    session: AsyncSession, device_id: str, *, limit: int = 100, cursor: str | None = None
) -> tuple[Sequence[DeviceEvent], str | None]:
    query = (
        select(DeviceEvent)
        .where(DeviceEvent.device_id == device_id)
        .order_by(DeviceEvent.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        (before,) = decode_cursor(cursor, 1)
        if not before.isdigit() or not 0 < int(before) <= 2**63 - 1:
            raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.")
        query = query.where(DeviceEvent.id < int(before))
    rows = list((await session.scalars(query)).all())
    next_cursor = encode_cursor(str(rows[limit - 1].id)) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def list_commands(session: AsyncSession, device_id: str, *, limit: int = 50) -> Sequence[Command]:
    query = (
        select(Command)
        .where(Command.device_id == device_id)
        .order_by(Command.created_at.desc(), Command.request_id.desc())
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def get_command(session: AsyncSession, device_id: str, request_id: str) -> Command:
    cmd = await session.get(Command, request_id)
    if cmd is None or cmd.device_id != device_id:
        raise CommandNotFound(f"No command {request_id!r} for device {device_id!r}.")
    return cmd
