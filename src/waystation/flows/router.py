"""HTTP routes for flows and MQTT servers (admin only; PROTOCOLS §4, §12)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from waystation.audit import service as audit
from waystation.auth.deps import client_ip, get_ctx, require_global
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.db import after_commit
from waystation.flows import service
from waystation.flows.schemas import (
    FlowCreate,
    FlowOut,
    FlowUpdate,
    FlowWithSecret,
    MqttServerCreate,
    MqttServerOut,
    MqttServerUpdate,
)
from waystation.secrets_box import SecretBox
from waystation.security.params import NameKey, RowId
from waystation.telemetry import service as telemetry_service

router = APIRouter(tags=["flows"])


def _box(ctx: AppContext) -> SecretBox:
    return SecretBox(ctx.settings.data_dir)


@router.get("/flows")
async def list_flows(
    _: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[FlowOut]]:
    async with ctx.db.session() as session:
        return {"items": [service.flow_out(f) for f in await service.list_flows(session)]}


@router.post("/flows", response_model=FlowWithSecret | FlowOut, status_code=201)
async def create_flow(
    body: FlowCreate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> FlowWithSecret | FlowOut:
    """Create a flow. A POST_ENDPOINT flow's answer carries its `endpoint_secret`: the only time it is
    shown."""
    async with ctx.db.session() as session:
        flow, secret = await service.create_flow(session, body, ctx.default_station_id, ctx.box)
        audit.record(
            session,
            actor=principal.actor,
            action="flow.create",
            target=f"flow:{flow.code}",
            summary=f"{flow.action} on {flow.topic}",
            ip=client_ip(request),
            station_id=flow.station_id,
        )
        return service.flow_with_secret(flow, secret)


@router.get("/flows/{code}", response_model=FlowOut)
async def get_flow(
    code: NameKey,
    _: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> FlowOut:
    async with ctx.db.session() as session:
        return service.flow_out(await service.get_flow(session, code))


@router.patch("/flows/{code}", response_model=FlowWithSecret | FlowOut)
async def update_flow(
    code: NameKey,
    body: FlowUpdate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> FlowWithSecret | FlowOut:
    """Change a flow. Switching it to POST_ENDPOINT makes a new `endpoint_secret`, shown in this answer
    only."""
    async with ctx.db.session() as session:
        flow, secret = await service.update_flow(session, code, body, ctx.box)
        audit.record(
            session,
            actor=principal.actor,
            action="flow.update",
            target=f"flow:{code}",
            summary=f"changed {', '.join(sorted(body.model_fields_set)) or 'nothing'}",
            ip=client_ip(request),
            station_id=flow.station_id,
        )
        return service.flow_with_secret(flow, secret)


@router.delete("/flows/{code}", status_code=204)
async def delete_flow(
    code: NameKey,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    async with ctx.db.session() as session:
        flow = await service.delete_flow(session, code)
        channel_ids = await telemetry_service.delete_channels_of(session, "flow", code)
        if ctx.ingest is not None:
            ingest = ctx.ingest
            after_commit(session, lambda: ingest.forget_channels(channel_ids))
        audit.record(
            session,
            actor=principal.actor,
            action="flow.delete",
            target=f"flow:{code}",
            summary="deleted",
            ip=client_ip(request),
            station_id=flow.station_id,
        )
    return Response(status_code=204)


@router.post("/flows/{code}/rotate-secret", response_model=FlowWithSecret)
async def rotate_flow_secret(
    code: NameKey,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> FlowWithSecret:
    """A new endpoint secret, shown once. Every attempt from now on (retries too) is signed with it only."""
    async with ctx.db.session() as session:
        flow = await service.get_flow(session, code)
        secret = service.rotate_endpoint_secret(flow, ctx.box)
        audit.record(
            session,
            actor=principal.actor,
            action="flow.rotate_secret",
            target=f"flow:{code}",
            summary="new endpoint signing secret",
            ip=client_ip(request),
            station_id=flow.station_id,
        )
        return FlowWithSecret(**service.flow_out(flow).model_dump(), endpoint_secret=secret)


@router.get("/flows/{code}/records")
async def flow_records(
    code: NameKey,
    limit: int = Query(default=100, ge=1, le=1000),
    _: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        flow = await service.get_flow(session, code)
        return {"items": await service.list_records(session, flow, limit)}


@router.get("/flows/{code}/deliveries")
async def flow_deliveries(
    code: NameKey,
    limit: int = Query(default=100, ge=1, le=1000),
    _: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        await service.get_flow(session, code)
        return {"items": await service.list_deliveries(session, "flow", code, limit)}


# --- MQTT servers -------------------------------------------------------------------------------------


@router.get("/mqtt-servers")
async def list_servers(
    _: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[MqttServerOut]]:
    async with ctx.db.session() as session:
        return {"items": [service.server_out(s) for s in await service.list_servers(session)]}


@router.post("/mqtt-servers", response_model=MqttServerOut, status_code=201)
async def create_server(
    body: MqttServerCreate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MqttServerOut:
    async with ctx.db.session() as session:
        server = await service.create_server(session, body, _box(ctx))
        audit.record(
            session,
            actor=principal.actor,
            action="mqtt_server.create",
            target=f"mqtt_server:{server.id}",
            summary=f"{server.name} at {server.host}:{server.port}",
            ip=client_ip(request),
        )
        return service.server_out(server)


@router.get("/mqtt-servers/{server_id}", response_model=MqttServerOut)
async def get_server(
    server_id: RowId, _: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> MqttServerOut:
    async with ctx.db.session() as session:
        return service.server_out(await service.get_server(session, server_id))


@router.patch("/mqtt-servers/{server_id}", response_model=MqttServerOut)
async def update_server(
    server_id: RowId,
    body: MqttServerUpdate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MqttServerOut:
    async with ctx.db.session() as session:
        server = await service.update_server(session, server_id, body, _box(ctx))
        changed = sorted(body.model_fields_set)
        audit.record(
            session,
            actor=principal.actor,
            action="mqtt_server.update",
            target=f"mqtt_server:{server_id}",
            summary=f"changed {', '.join(changed) or 'nothing'}",
            ip=client_ip(request),
        )
        return service.server_out(server)


@router.delete("/mqtt-servers/{server_id}", status_code=204)
async def delete_server(
    server_id: RowId,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    async with ctx.db.session() as session:
        await service.delete_server(session, server_id)
        audit.record(
            session,
            actor=principal.actor,
            action="mqtt_server.delete",
            target=f"mqtt_server:{server_id}",
            summary="deleted",
            ip=client_ip(request),
        )
    return Response(status_code=204)
