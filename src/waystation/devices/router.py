"""HTTP routes for device types, devices, their events and commands (PROTOCOLS §12)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal
from waystation.broker import credentials as broker_credentials
from waystation.context import AppContext
from waystation.db import after_commit
from waystation.devices import service
from waystation.devices.models import Device
from waystation.devices.runtime import DeviceRuntime
from waystation.devices.schemas import (
    CommandOut,
    DeviceCreate,
    DeviceCreated,
    DeviceOut,
    DeviceTokenOut,
    DeviceTypeOut,
    DeviceUpdate,
    MqttAccessOut,
)
from waystation.devices.types import type_to_dict
from waystation.errors import DeviceNotFound, ServiceUnavailable, StationNotFound, Unprocessable
from waystation.provisioning import service as provisioning_service
from waystation.security.params import DeviceKey, RequestKey
from waystation.security.ratelimit import limit
from waystation.telemetry import service as telemetry_service

router = APIRouter(tags=["devices"])


def runtime(ctx: AppContext) -> DeviceRuntime:
    if ctx.devices is None:
        raise ServiceUnavailable("The device runtime is not running.")
    return ctx.devices


async def visible_device(
    session: AsyncSession, principal: Principal, device_id: str, needed: str = "viewer"
) -> Device:
    """The device, if the caller may see its station (404 otherwise, as if it did not exist) and holds
    `needed` there (403 otherwise)."""
    device = await service.get_device(session, device_id)
    check_station(principal, device.station_id, DeviceNotFound(f"No device {device_id!r}."), needed)
    return device


@router.get("/device-types", response_model=dict[str, list[DeviceTypeOut]])
async def list_device_types(
    _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        return {"items": [type_to_dict(t) for t in await service.list_types(session)]}


@router.get("/devices")
async def list_devices(
    status: str | None = Query(default=None, pattern="^(online|offline|unknown)$"),
    type: str | None = Query(default=None, max_length=64),
    station_id: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_devices(
            session,
            station_id=station_id,
            status=status,
            type_id=type,
            limit=limit,
            cursor=cursor,
            visible_stations=principal.visible_stations,
        )
        return {
            "items": [service.device_out(d).model_dump(mode="json") for d in rows],
            "next_cursor": next_cursor,
        }


@router.post("/devices", response_model=DeviceCreated, status_code=201)
async def create_device(
    body: DeviceCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DeviceCreated:
    rt = runtime(ctx)
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "admin")
    async with ctx.db.session() as session:
        device = await service.create_device(session, body, ctx.default_station_id)
        token = service.issue_device_token(device)
        creds = await broker_credentials.issue_credentials(session, ctx.box, device.id)
        host, port, tls = broker_credentials.client_endpoint(ctx.settings)
        audit.record(
            session,
            actor=principal.actor,
            action="device.create",
            target=f"device:{device.id}",
            summary=f"created {device.type} {device.name!r}",
            ip=client_ip(request),
            station_id=device.station_id,
        )
        device_id, station_id, type_id = device.id, device.station_id, device.type
        after_commit(session, lambda: rt.device_added(device_id, station_id, type_id))
        return DeviceCreated(
            **service.device_out(device).model_dump(),
            device_token=token,
            mqtt=MqttAccessOut(
                host=host,
                port=port,
                tls=tls,
                username=creds.username,
                password=creds.password,
                client_id=creds.client_id,
            ),
        )


@router.post(
    "/devices/{device_id}/token",
    response_model=DeviceTokenOut,
    dependencies=[Depends(limit("device_token", per="caller"))],
)
async def rotate_device_token(
    device_id: DeviceKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DeviceTokenOut:
    """Issue a new `X-Device-Token` for the device; the old one stops working at once."""
    async with ctx.db.session() as session:
        device = await visible_device(session, principal, device_id, "admin")
        token = service.issue_device_token(device)
        audit.record(
            session,
            actor=principal.actor,
            action="device.token_rotate",
            target=f"device:{device_id}",
            summary="device token rotated",
            ip=client_ip(request),
            station_id=device.station_id,
        )
    return DeviceTokenOut(device_id=device_id, device_token=token)


@router.get("/devices/{device_id}", response_model=DeviceOut)
async def get_device(
    device_id: DeviceKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> DeviceOut:
    async with ctx.db.session() as session:
        return service.device_out(await visible_device(session, principal, device_id))


@router.patch("/devices/{device_id}", response_model=DeviceOut)
async def update_device(
    device_id: DeviceKey,
    body: DeviceUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DeviceOut:
    async with ctx.db.session() as session:
        await visible_device(session, principal, device_id, "admin")
        device, changed = await service.update_device(session, device_id, body)
        if "enabled" in changed:
            await broker_credentials.device_access_changed(session, device_id)
            if not device.enabled:
                await provisioning_service.drop_unused_tokens(session, device_id)
            enabled = device.enabled
            rt = runtime(ctx)
            after_commit(session, lambda: rt.device_enabled(device_id, enabled))
        audit.record(
            session,
            actor=principal.actor,
            action="device.update",
            target=f"device:{device.id}",
            summary=f"changed {', '.join(changed) or 'nothing'}",
            ip=client_ip(request),
            station_id=device.station_id,
        )
        return service.device_out(device)


@router.delete("/devices/{device_id}", status_code=204)
async def delete_device(
    device_id: DeviceKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    rt = runtime(ctx)
    async with ctx.db.session() as session:
        await visible_device(session, principal, device_id, "admin")
        await broker_credentials.device_removed(session, device_id)
        device = await service.delete_device(session, device_id)
        channel_ids = await telemetry_service.delete_channels_of(session, "device", device_id)
        audit.record(
            session,
            actor=principal.actor,
            action="device.delete",
            target=f"device:{device_id}",
            summary=f"deleted {device.name!r}",
            ip=client_ip(request),
            station_id=device.station_id,
        )
        after_commit(session, lambda: rt.device_removed(device_id))
        if ctx.ingest is not None:
            ingest = ctx.ingest
            after_commit(session, lambda: ingest.forget_channels(channel_ids))
    return Response(status_code=204)


@router.get("/devices/{device_id}/events")
async def list_events(
    device_id: DeviceKey,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        await visible_device(session, principal, device_id)
        rows, next_cursor = await service.list_events(session, device_id, limit=limit, cursor=cursor)
        return {
            "items": [service.event_out(e).model_dump(mode="json") for e in rows],
            "next_cursor": next_cursor,
        }


@router.post("/devices/{device_id}/commands", response_model=CommandOut, status_code=202)
async def send_command(
    device_id: DeviceKey,
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"action": "set_brightness", "brightness": 75}]),
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> CommandOut:
    action = body.get("action")
    if not isinstance(action, str) or not action or len(action) > 64:
        raise Unprocessable("'action' must be a non-empty string naming the command.")
    params = {k: v for k, v in body.items() if k != "action"}
    async with ctx.db.session() as session:
        # Firmware updates are an admin's decision (normally made through an OTA rollout).
        needed = "admin" if action == "ota_update" else "member"
        await visible_device(session, principal, device_id, needed)
    cmd = await runtime(ctx).submit_command(device_id, action, params, principal.actor, client_ip(request))
    return service.command_out(cmd)


@router.get("/devices/{device_id}/commands")
async def list_commands(
    device_id: DeviceKey,
    limit: int = Query(default=50, ge=1, le=500),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        await visible_device(session, principal, device_id)
        rows = await service.list_commands(session, device_id, limit=limit)
        return {"items": [service.command_out(c).model_dump(mode="json") for c in rows]}


@router.get("/devices/{device_id}/commands/{request_id}", response_model=CommandOut)
async def get_command(
    device_id: DeviceKey,
    request_id: RequestKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> CommandOut:
    async with ctx.db.session() as session:
        await visible_device(session, principal, device_id)
        return service.command_out(await service.get_command(session, device_id, request_id))
