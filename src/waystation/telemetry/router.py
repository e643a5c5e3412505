"""HTTP routes: channels, datapoints (raw, bucketed, latest, HTTP batch), experiments and CSV export,
and the live telemetry WebSocket (PROTOCOLS §5, §12)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from waystation.audit import service as audit
from waystation.auth.deps import client_ip, get_ctx, require, telemetry_writer
from waystation.auth.roles import Principal, role_at_least, role_for_scopes
from waystation.auth.tokens_service import API_TOKEN_PREFIX, authenticate_token
from waystation.bus import TypeFilter
from waystation.context import AppContext
from waystation.devices import service as devices_service
from waystation.errors import InsufficientRole, ServiceUnavailable, TokenInvalid, WaystationError
from waystation.telemetry import service
from waystation.telemetry.ingest import IngestPipeline
from waystation.telemetry.schemas import (
    BatchRequest,
    BatchResult,
    ChannelOut,
    ChannelUpdate,
    ExperimentCreate,
    ExperimentOut,
)

router = APIRouter(tags=["telemetry"])
ws_router = APIRouter()

WS_MAX_PER_SECOND = 5


def pipeline(ctx: AppContext) -> IngestPipeline:
    if ctx.ingest is None:
        raise ServiceUnavailable("The ingest pipeline is not running.")
    return ctx.ingest


@router.get("/channels")
async def list_channels(
    device_id: str | None = Query(default=None, max_length=64),
    kind: str | None = Query(default=None, pattern="^(device|flow|controller)$"),
    station_id: str | None = Query(default=None, max_length=32),
    _: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, list[ChannelOut]]:
    async with ctx.db.session() as session:
        rows = await service.list_channels(session, device_id=device_id, kind=kind, station_id=station_id)
        return {"items": [service.channel_out(c) for c in rows]}


@router.get("/channels/{channel_id:path}", response_model=ChannelOut)
async def get_channel(
    channel_id: str, _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> ChannelOut:
    async with ctx.db.session() as session:
        return service.channel_out(await service.get_channel(session, channel_id))


@router.patch("/channels/{channel_id:path}", response_model=ChannelOut)
async def update_channel(
    channel_id: str,
    body: ChannelUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> ChannelOut:
    async with ctx.db.session() as session:
        channel = await service.get_channel(session, channel_id)
        for field in body.model_fields_set:
            setattr(channel, field, getattr(body, field))
        audit.record(
            session,
            actor=principal.actor,
            action="channel.update",
            target=f"channel:{channel_id}",
            summary=f"changed {', '.join(sorted(body.model_fields_set)) or 'nothing'}",
            ip=client_ip(request),
            station_id=channel.station_id,
        )
        return service.channel_out(channel)


@router.get("/datapoints")
async def datapoints(
    channel: str = Query(max_length=200),
    start: datetime | None = Query(default=None, alias="from"),
    end: datetime | None = Query(default=None, alias="to"),
    bucket: str | None = Query(default=None, pattern="^(1m|1h|1d|auto)$"),
    limit: int = Query(default=1000, ge=1, le=10_000),
    cursor: str | None = Query(default=None, max_length=100),
    _: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Raw points (oldest first, cursor-paged), or min/max/avg/count per bucket with `bucket=`."""
    async with ctx.db.session() as session:
        ch = await service.get_channel(session, channel)
        default = timedelta(hours=24) if bucket else timedelta(hours=1)
        start_us, end_us = service.resolve_range(start, end, default)
        if bucket:
            seconds = service.pick_bucket(bucket, end_us - start_us)
            items = await service.bucketed_datapoints(session, ch, start_us, end_us, seconds)
            return {"items": items, "bucket_seconds": seconds}
        items, next_cursor = await service.raw_datapoints(session, ch, start_us, end_us, limit, cursor)
        return {"items": items, "next_cursor": next_cursor}


@router.get("/datapoints/latest")
async def latest(
    channel: list[str] = Query(default=[], max_length=500),
    device_id: str | None = Query(default=None, max_length=64),
    _: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        ids = list(channel)
        if device_id:
            ids += [c.id for c in await service.list_channels(session, device_id=device_id)]
        return {"items": await service.latest_values(session, ids)}


@router.post("/datapoints/batch", response_model=BatchResult)
async def post_batch(
    body: BatchRequest,
    request: Request,
    principal: Principal = Depends(telemetry_writer),
    ctx: AppContext = Depends(get_ctx),
) -> BatchResult:
    """The same items as the controller WebSocket, over HTTP (at most 500 per call).

    Callers: a device with its `X-Device-Token` (only its own `device:{id}/…` channels), an API token with
    `api:write`, or a user with the member role or higher."""
    ingest = pipeline(ctx)
    if principal.kind == "device":
        own = f"device:{principal.id}/"
        if any(not i.channel.startswith(own) for i in body.items):
            raise InsufficientRole(f"A device may only write its own channels ({own}…).")
    stations: dict[str, str] = {}
    async with ctx.db.session() as session:
        for device_id in {
            i.channel.split(":", 1)[1].split("/", 1)[0] for i in body.items if i.channel.startswith("device:")
        }:
            stations[device_id] = (await devices_service.get_device(session, device_id)).station_id
    stored = await ingest.write_items(
        [(i.channel, i.value, i.ts) for i in body.items], stations, default_station=ctx.default_station_id
    )
    async with ctx.db.session() as session:
        audit.record(
            session,
            actor=principal.actor,
            action="datapoints.batch",
            target=None,
            summary=f"{stored} of {len(body.items)} datapoints stored",
            ip=client_ip(request),
        )
    return BatchResult(received=len(body.items), stored=stored, duplicates=len(body.items) - stored)


# --- experiments ------------------------------------------------------------------------------------


@router.post("/experiments", response_model=ExperimentOut, status_code=201)
async def start_experiment(
    body: ExperimentCreate,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> ExperimentOut:
    station_id = body.station_id or ctx.default_station_id
    ingest = pipeline(ctx)
    async with ctx.db.session() as session:
        exp = await service.start_experiment(
            session, station_id=station_id, name=body.name, notes=body.notes, actor=principal.actor
        )
        audit.record(
            session,
            actor=principal.actor,
            action="experiment.start",
            target=f"experiment:{exp.id}",
            summary=f"started {body.name!r}",
            ip=client_ip(request),
            station_id=station_id,
        )
        exp_id = exp.id
    ingest.active_experiments[station_id] = exp_id
    return service.experiment_out(exp)


@router.post("/experiments/{experiment_id}/stop", response_model=ExperimentOut)
async def stop_experiment(
    experiment_id: int,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> ExperimentOut:
    ingest = pipeline(ctx)
    async with ctx.db.session() as session:
        exp = await service.stop_experiment(session, experiment_id)
        audit.record(
            session,
            actor=principal.actor,
            action="experiment.stop",
            target=f"experiment:{exp.id}",
            summary=f"stopped {exp.name!r}",
            ip=client_ip(request),
            station_id=exp.station_id,
        )
    if ingest.active_experiments.get(exp.station_id) == exp.id:
        del ingest.active_experiments[exp.station_id]
    return service.experiment_out(exp)


@router.get("/experiments")
async def list_experiments(
    _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[ExperimentOut]]:
    async with ctx.db.session() as session:
        return {"items": [service.experiment_out(e) for e in await service.list_experiments(session)]}


@router.get("/experiments/{experiment_id}", response_model=ExperimentOut)
async def get_experiment(
    experiment_id: int, _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> ExperimentOut:
    async with ctx.db.session() as session:
        return service.experiment_out(await service.get_experiment(session, experiment_id))


@router.get("/experiments/{experiment_id}/export.csv")
async def export_csv(
    experiment_id: int, _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> StreamingResponse:
    async with ctx.db.session() as session:
        exp = await service.get_experiment(session, experiment_id)
    filename = f"experiment-{exp.id}.csv"
    return StreamingResponse(
        service.export_csv_rows(ctx.db, experiment_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


# --- live values over WebSocket ---------------------------------------------------------------------


@ws_router.websocket("/api/v1/ws/telemetry")
async def telemetry_socket(websocket: WebSocket) -> None:
    """`?channels=a,b` (empty: all); batches at most 5 times a second per client.

    Browsers cannot set headers on a WebSocket, so the access token may also come as `?access_token=`.
    """
    ctx: AppContext = websocket.app.state.ctx
    header = websocket.headers.get("authorization", "")
    token = (
        header[7:].strip()
        if header.lower().startswith("bearer ")
        else websocket.query_params.get("access_token", "")
    )
    try:
        if token.startswith(API_TOKEN_PREFIX):
            async with ctx.db.session() as session:
                row = await authenticate_token(session, token)
            if role_for_scopes(row.scopes) is None:
                raise TokenInvalid()
        else:
            claims = ctx.signer.verify(token)
            if not role_at_least(claims.role, "viewer"):
                raise TokenInvalid()
    except WaystationError:
        # Accept, then close with a clear code: a browser cannot read the status of a refused handshake.
        await websocket.accept()
        await websocket.close(code=4401, reason="authentication required")
        return
    wanted = {c for c in websocket.query_params.get("channels", "").split(",") if c}
    await websocket.accept()
    sub = ctx.bus.subscribe(TypeFilter(["telemetry.batch"]), maxsize=100)
    pending: dict[str, dict[str, Any]] = {}
    interval = 1.0 / WS_MAX_PER_SECOND

    def merge(item: object) -> None:
        data = getattr(item, "data", None)
        for point in (data or {}).get("items", ()):
            if not wanted or point["channel"] in wanted:
                pending[point["channel"]] = point  # coalesce: the newest value per channel

    async def pump() -> None:
        # One sender: wait for news, take everything queued, send one batch, then rest so a client
        # never gets more than WS_MAX_PER_SECOND messages a second.
        while True:
            merge(await sub.get())
            while (more := sub.get_nowait()) is not None:
                merge(more)
            if pending:
                items = list(pending.values())
                pending.clear()
                await websocket.send_text(orjson.dumps({"type": "datapoints", "items": items}).decode())
                await asyncio.sleep(interval)

    async def receive() -> None:
        while True:
            await websocket.receive_text()  # clients may send pings; anything else is ignored

    tasks = [asyncio.create_task(t) for t in (pump(), receive())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        sub.close()
