"""Health (`/healthz`), readiness (`/readyz`), Prometheus `/metrics`, `/api/v1/status/ingest` and the
projections: `/api/v1/status/home`, `/api/v1/status/system`, `/api/v1/devices/{id}/workspace`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from waystation import __version__
from waystation.auth.deps import check_station, get_ctx, require, require_global
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.devices.protocol import REJECTION_REASONS
from waystation.devices.router import visible_device
from waystation.errors import ServiceUnavailable, StationNotFound
from waystation.security.params import DeviceKey
from waystation.status import projections

probes = APIRouter(tags=["status"])
router = APIRouter(tags=["status"])


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@probes.get("/readyz")
async def readyz(ctx: AppContext = Depends(get_ctx)) -> JSONResponse:
    database = await ctx.db.ping()
    broker = bool(ctx.mqtt and ctx.mqtt.connected)
    body: dict[str, Any] = {
        "status": "ready" if database and broker else "not_ready",
        "database": "ok" if database else "unreachable",
        "broker": "ok" if broker else "unreachable",
        "broker_error": None if broker or ctx.mqtt is None else ctx.mqtt.last_error,
    }
    return JSONResponse(body, status_code=200 if database and broker else 503)


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/status/ingest")
async def ingest_status(
    request: Request, principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """Ingest counters. Callers limited to some stations get their stations' online devices and no broker
    details (those describe the whole installation)."""
    m = request.app.state.metrics
    link = ctx.mqtt
    visible = principal.visible_stations
    online = sum(
        1
        for d in (ctx.devices.known.values() if ctx.devices else ())
        if d.status == "online" and (visible is None or d.station_id in visible)
    )
    body: dict[str, Any] = {
        "accepted": dict(m.accepted),
        "rejected": {reason: m.rejected.get(reason, 0) for reason in REJECTION_REASONS},
        "mqtt": {
            "connected": bool(link and link.connected),
            "broker": link.endpoint.display() if link else None,
            "received": link.received if link else 0,
            "handler_errors": link.handler_errors if link else 0,
            "inbox_depth": link.inbox_depth if link else 0,
            "last_error": link.last_error if link else None,
        },
        "embedded_broker": (
            {"kind": ctx.broker.kind, "running": ctx.broker.running, "restarts": ctx.broker.restarts}
            if ctx.broker
            else None
        ),
        "devices_online": online,
        "uptime_seconds": round(time.time() - ctx.started_at, 1),
    }
    if visible is not None:
        body["mqtt"]["broker"] = None
        body["embedded_broker"] = None
    return body


@router.get("/status/home")
async def home_status(
    station_id: str | None = Query(default=None, max_length=32, description="only this station"),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """The home overview: devices by status, active alerts, the latest device events, and the broker,
    cloud and BLE link states, over the stations the caller may see (or one of them)."""
    stations = None if principal.visible_stations is None else set(principal.visible_stations)
    if station_id is not None:
        check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."))
        stations = {station_id}
    async with ctx.db.session() as session:
        return await projections.home(session, ctx, stations)


@router.get("/status/system")
async def system_status(
    principal: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """Host and process health: installation-wide, so for installation-wide owners and admins (the same
    callers whose event streams carry `system.status`)."""
    sampler = ctx.status_sampler
    if sampler is None:
        raise ServiceUnavailable("The status sampler is not running.")
    async with ctx.db.session() as session:
        return await projections.system(session, ctx, sampler.rates())


@router.get("/devices/{device_id}/workspace")
async def device_workspace(
    device_id: DeviceKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """A device page in one call: the device, latest values, recent events, commands in flight, OTA."""
    async with ctx.db.session() as session:
        device = await visible_device(session, principal, device_id)
        return await projections.workspace(session, ctx, device)
