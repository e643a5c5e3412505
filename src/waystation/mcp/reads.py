"""What read tools and resources answer, always for the token's one station, through the slices'
services and their allow-listed output shapes."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from waystation import __version__
from waystation.audit.models import AuditEntry
from waystation.context import AppContext
from waystation.devices import service as devices
from waystation.devices.models import Device, DeviceEvent
from waystation.devices.types import BUILTIN_COMMANDS, type_to_dict
from waystation.errors import ChannelNotFound, DeviceNotFound, InvalidTimeRange
from waystation.flows import service as flows
from waystation.mcp.auth import McpAccess
from waystation.mcp.views import audit_view, flow_view
from waystation.rules import service as rules
from waystation.status import projections
from waystation.telemetry import service as telemetry

MAX_POINTS = 1000  # a telemetry answer holds at most this many points or buckets
MAX_RANGE = timedelta(days=400)
MAX_LIST = 500


async def status(ctx: AppContext, access: McpAccess) -> dict[str, Any]:
    stations = {access.station_id}
    async with ctx.db.session() as session:
        home = await projections.home(session, ctx, stations)
        running = [
            e for e in await telemetry.list_experiments(session, access.station_id) if e.stopped_at is None
        ]
    links = home["links"]
    return {
        "station_id": access.station_id,
        "version": __version__,
        "uptime_seconds": round(time.time() - ctx.started_at, 1),
        "devices": home["devices"],
        "alerts": home["alerts"],
        "recent_events": home["recent_events"],
        "broker_connected": links["broker"]["connected"],
        "cloud": links["cloud"].get("state"),
        "running_experiment": telemetry.experiment_out(running[0]).model_dump(mode="json")
        if running
        else None,
    }


async def list_devices(
    ctx: AppContext,
    access: McpAccess,
    *,
    status: str | None = None,
    type_id: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows, next_cursor = await devices.list_devices(
            session,
            station_id=access.station_id,
            status=status,
            type_id=type_id,
            limit=max(1, min(limit, MAX_LIST)),
            visible_stations={access.station_id},
        )
        return {
            "items": [devices.device_out(d).model_dump(mode="json") for d in rows],
            "truncated": next_cursor is not None,
        }


async def get_device(ctx: AppContext, access: McpAccess, device_id: str) -> dict[str, Any]:
    async with ctx.db.session() as session:
        device = await devices.get_device(session, device_id)
        if device.station_id != access.station_id:
            raise DeviceNotFound(f"No device {device_id!r}.")
        channels = await telemetry.list_channels(session, device_id=device_id)
        commands = await devices.list_commands(session, device_id, limit=10)
        device_type = await devices.get_type(session, device.type)
        return {
            "device": devices.device_out(device).model_dump(mode="json"),
            "channels": [telemetry.channel_out(c).model_dump(mode="json") for c in channels],
            "recent_commands": [devices.command_out(c).model_dump(mode="json") for c in commands],
            "commands": type_to_dict(device_type)["commands"],
        }


async def list_channels(ctx: AppContext, access: McpAccess, device_id: str | None = None) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows = await telemetry.list_channels(
            session, device_id=device_id, station_id=access.station_id, visible_stations={access.station_id}
        )
        return {"items": [telemetry.channel_out(c).model_dump(mode="json") for c in rows[:MAX_LIST]]}


async def query_telemetry(
    ctx: AppContext,
    access: McpAccess,
    *,
    channel: str,
    start: datetime | None,
    end: datetime | None,
    bucket: str,
    limit: int,
) -> dict[str, Any]:
    """Bucketed (min/max/avg/count) by default; raw points only when asked, and never more than
    `MAX_POINTS` either way, over at most `MAX_RANGE`."""
    limit = max(1, min(limit, MAX_POINTS))
    async with ctx.db.session() as session:
        ch = await telemetry.get_channel(session, channel)
        if ch.station_id != access.station_id:
            raise ChannelNotFound(f"No channel {channel!r}.")
        default = timedelta(hours=24) if bucket != "raw" else timedelta(hours=1)
        start_us, end_us = telemetry.resolve_range(start, end, default)
        if end_us - start_us > MAX_RANGE.total_seconds() * 1_000_000:
            raise InvalidTimeRange(f"Ask for at most {MAX_RANGE.days} days at a time.")
        if bucket == "raw":
            items, next_cursor = await telemetry.raw_datapoints(session, ch, start_us, end_us, limit, None)
            return {"channel": channel, "bucket": "raw", "items": items, "truncated": next_cursor is not None}
        seconds = telemetry.pick_bucket(bucket, end_us - start_us)
        if (end_us - start_us) / 1_000_000 / seconds > MAX_POINTS:
            raise InvalidTimeRange(
                f"That range has more than {MAX_POINTS} buckets; use a larger bucket or 'auto'."
            )
        items = await telemetry.bucketed_datapoints(session, ch, start_us, end_us, seconds)
        return {"channel": channel, "bucket_seconds": seconds, "items": items[:limit]}


async def recent_events(
    ctx: AppContext, access: McpAccess, *, device_id: str | None = None, limit: int = 50
) -> dict[str, Any]:
    limit = max(1, min(limit, 200))
    async with ctx.db.session() as session:
        query = (
            select(DeviceEvent)
            .join(Device, Device.id == DeviceEvent.device_id)
            .where(Device.station_id == access.station_id)
            .order_by(DeviceEvent.id.desc())
            .limit(limit)
        )
        if device_id:
            query = query.where(DeviceEvent.device_id == device_id)
        rows = (await session.scalars(query)).all()
        return {"items": [devices.event_out(e).model_dump(mode="json") for e in rows]}


async def list_flows(ctx: AppContext, access: McpAccess) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows = await flows.list_flows(session)
        return {"items": [flow_view(f) for f in rows if f.station_id == access.station_id]}


async def list_rules(ctx: AppContext, access: McpAccess, enabled: bool | None = None) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows, next_cursor = await rules.list_rules(
            session, stations={access.station_id}, enabled=enabled, limit=MAX_LIST
        )
        return {
            "items": [rules.rule_out(r).model_dump(mode="json") for r in rows],
            "truncated": bool(next_cursor),
        }


async def list_alerts(ctx: AppContext, access: McpAccess, status: str | None = "active") -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows, _ = await rules.list_alerts(session, stations={access.station_id}, status=status, limit=100)
        return {"items": [rules.alert_out(a).model_dump(mode="json") for a in rows]}


async def list_experiments(ctx: AppContext, access: McpAccess) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows = await telemetry.list_experiments(session, access.station_id)
        return {"items": [telemetry.experiment_out(e).model_dump(mode="json") for e in rows[:100]]}


async def own_audit(ctx: AppContext, access: McpAccess, limit: int = 50) -> dict[str, Any]:
    """This token's MCP calls, and what people ran on its behalf after approving."""
    limit = max(1, min(limit, 200))
    async with ctx.db.session() as session:
        rows = (
            await session.scalars(
                select(AuditEntry)
                .where(
                    AuditEntry.station_id == access.station_id,
                    or_(AuditEntry.actor == access.actor, AuditEntry.actor.endswith(f" via {access.actor}")),
                )
                .order_by(AuditEntry.id.desc())
                .limit(limit)
            )
        ).all()
        return {"items": [audit_view(e) for e in rows]}


async def protocol_schemas(ctx: AppContext) -> dict[str, Any]:
    """The device protocol (docs/device-protocol.md) as JSON Schemas, and each device type's commands."""
    async with ctx.db.session() as session:
        types = [type_to_dict(t) for t in await devices.list_types(session)]
    obj: dict[str, Any] = {"type": "object"}
    return {
        "topic_root": "station/{station_id}/device/{device_id}/",
        "device_to_station": {
            "handshake": {
                **obj,
                "required": ["type"],
                "properties": {
                    "type": {"type": "string"},
                    "firmwareVersion": {"type": "string"},
                    "chip": {"type": "string"},
                },
            },
            "state": {
                **obj,
                "required": ["state"],
                "properties": {"state": obj, "ts": {"type": "string", "format": "date-time"}},
                "description": "Numeric keys of `state` become telemetry channels device:{id}/{key}.",
            },
            "event": {
                **obj,
                "required": ["event"],
                "properties": {"event": {"enum": ["device_event", "user_event"]}, "data": obj},
            },
            "heartbeat": {**obj, "properties": {"status": {"enum": ["online", "offline"]}}},
            "command/ack": {
                **obj,
                "required": ["request_id", "status"],
                "properties": {
                    "request_id": {"type": "string"},
                    "status": {"enum": ["accepted", "applied", "failed"]},
                    "error": {"type": "string"},
                },
            },
        },
        "station_to_device": {
            "handshake/ack": {**obj, "properties": {"status": {"enum": ["ok", "unknown_device"]}}},
            "command": {
                **obj,
                "required": ["request_id", "action"],
                "properties": {"request_id": {"type": "string"}, "action": {"type": "string"}},
                "description": "Plus the command's parameters, as given by the device type's `commands`.",
            },
        },
        "builtin_commands": BUILTIN_COMMANDS,
        "device_types": types,
    }
