"""HTTP routes of broker sync: its status, an on-demand reconcile, and rotating a device's MQTT password."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from waystation.audit import service as audit
from waystation.auth.deps import client_ip, get_ctx, require, require_global
from waystation.auth.roles import Principal
from waystation.broker import credentials
from waystation.broker.sync import BrokerSync
from waystation.context import AppContext
from waystation.devices.router import visible_device
from waystation.devices.schemas import MqttAccessOut
from waystation.errors import BrokerSyncUnavailable
from waystation.security.params import DeviceKey

router = APIRouter(tags=["broker"])


class OutboxItemOut(BaseModel):
    id: int
    op: str
    username: str | None
    device_id: str | None
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


class ReconcileCounts(BaseModel):
    created: int
    updated: int
    removed: int


class BrokerSyncOut(BaseModel):
    mode: str
    disconnects_clients: bool
    warnings: list[str]
    broker_reachable: bool | None
    backlog: int
    oldest_pending_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    last_reconcile_at: datetime | None
    last_reconcile: ReconcileCounts | None
    items: list[OutboxItemOut]


def sync_worker(ctx: AppContext) -> BrokerSync:
    if ctx.broker_sync is None:
        raise BrokerSyncUnavailable("Broker sync has not started yet; try again shortly.")
    return ctx.broker_sync


@router.get("/broker/sync", response_model=BrokerSyncOut)
async def broker_sync_status(
    limit: int = Query(default=50, ge=1, le=500),
    _: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """The outbox backlog (newest pending rows first, never a secret) and the last reconcile."""
    return await sync_worker(ctx).status(limit=limit)


@router.post("/broker/sync/reconcile", status_code=202)
async def request_reconcile(
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Queue a full reconcile. It goes through the outbox like any change, so it survives a restart and
    waits for the broker if it is down."""
    worker = sync_worker(ctx)
    if not worker.reconciles:
        raise BrokerSyncUnavailable(
            f"Broker sync has nothing to reconcile in mode {worker.mode!r} (WAYSTATION_BROKER_ADMIN)."
        )
    async with ctx.db.session() as session:
        credentials.enqueue(session, "reconcile")
        audit.record(
            session,
            actor=principal.actor,
            action="broker.reconcile",
            target="broker",
            summary=f"full broker reconcile requested ({worker.mode})",
            ip=client_ip(request),
        )
    return {"status": "queued", "mode": worker.mode}


@router.post("/devices/{device_id}/mqtt-credentials", response_model=MqttAccessOut)
async def rotate_mqtt_credentials(
    device_id: DeviceKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MqttAccessOut:
    """A new MQTT password for the device, returned once. The broker learns it through the outbox; its
    connections with the old password are dropped when the change is applied."""
    async with ctx.db.session() as session:
        device = await visible_device(session, principal, device_id, "admin")
        creds = await credentials.issue_credentials(session, ctx.box, device.id)
        host, port, tls = credentials.client_endpoint(ctx.settings)
        audit.record(
            session,
            actor=principal.actor,
            action="device.mqtt_credentials_rotate",
            target=f"device:{device.id}",
            summary="MQTT credentials rotated",
            ip=client_ip(request),
            station_id=device.station_id,
        )
    return MqttAccessOut(
        host=host,
        port=port,
        tls=tls,
        username=creds.username,
        password=creds.password,
        client_id=creds.client_id,
    )
