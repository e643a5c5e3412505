"""HTTP routes of client binding (PROTOCOLS §3)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal
from waystation.broker import credentials as broker_credentials
from waystation.broker.acl import device_topics
from waystation.context import AppContext
from waystation.devices import service as devices_service
from waystation.devices.schemas import MqttAccessOut
from waystation.errors import DeviceDisabled, DeviceNotFound
from waystation.provisioning import service
from waystation.security.params import DeviceKey
from waystation.security.ratelimit import limit

router = APIRouter(tags=["provisioning"])


class BindTokenOut(BaseModel):
    bind_token: str
    expires_at: datetime


class BindRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # PROTOCOLS: unknown fields are ignored on input
    bind_token: str = Field(min_length=8, max_length=128)


class BindResult(BaseModel):
    station_id: str
    device_id: str
    device_token: str
    mqtt: MqttAccessOut
    topics: dict[str, str]


@router.post("/devices/{device_id}/bind-token", response_model=BindTokenOut, status_code=201)
async def create_bind_token(
    device_id: DeviceKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> BindTokenOut:
    """A one-time `wsb_…` token, valid 5 minutes, that a client exchanges at `POST /api/v1/client/bind`
    for this device's credentials."""
    async with ctx.db.session() as session:
        device = await devices_service.get_device(session, device_id)
        check_station(principal, device.station_id, DeviceNotFound(f"No device {device_id!r}."), "admin")
        if not device.enabled:
            raise DeviceDisabled("This device is disabled; enable it before binding a client to it.")
        token, expires_at = await service.issue_bind_token(session, device_id, principal.actor)
        audit.record(
            session,
            actor=principal.actor,
            action="device.bind_token",
            target=f"device:{device_id}",
            summary="bind token issued (valid 5 minutes)",
            ip=client_ip(request),
            station_id=device.station_id,
        )
    return BindTokenOut(bind_token=token, expires_at=expires_at)


@router.post("/client/bind", response_model=BindResult, dependencies=[Depends(limit("bind"))])
async def bind_client(body: BindRequest, request: Request, ctx: AppContext = Depends(get_ctx)) -> BindResult:
    """No other authentication: the bind token is the credential. Each token works once; the device's
    token and broker password are replaced, so an earlier holder loses access."""
    host, port, tls = broker_credentials.client_endpoint(ctx.settings)
    async with ctx.db.session() as session:
        bound = await service.bind(session, ctx.box, body.bind_token)
        device = bound.device
        audit.record(
            session,
            actor=f"device:{device.id}",
            action="device.bind",
            target=f"device:{device.id}",
            summary="client bound; device token and broker password replaced",
            ip=client_ip(request),
            station_id=device.station_id,
        )
        return BindResult(
            station_id=device.station_id,
            device_id=device.id,
            device_token=bound.device_token,
            mqtt=MqttAccessOut(
                host=host,
                port=port,
                tls=tls,
                username=bound.mqtt.username,
                password=bound.mqtt.password,
                client_id=bound.mqtt.client_id,
            ),
            topics=device_topics(device.station_id, device.id),
        )
