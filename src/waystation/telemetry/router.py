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
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import (
    StreamAuth,
    check_station,
    client_ip,
    get_ctx,
    principal_from_token,
    require,
    telemetry_writer,
)
from waystation.auth.roles import Principal
from waystation.bus import TypeFilter
from waystation.context import AppContext
from waystation.devices import service as devices_service
from waystation.errors import (
    ChannelNotFound,
    DeviceNotFound,
    ExperimentNotFound,
    InsufficientRole,
    ServiceUnavailable,
    StationNotFound,
    WaystationError,
)
from waystation.security.params import ChannelKey, RowId
from waystation.telemetry import service
from waystation.telemetry.ingest import IngestPipeline
from waystation.telemetry.models import Channel, Experiment
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


async def visible_channel(
    session: AsyncSession, principal: Principal, channel_id: str, needed: str = "viewer"
) -> Channel:
    channel = await service.get_channel(session, channel_id)
    # A channel without a station is visible to installation-wide callers only.
    missing = ChannelNotFound(f"No channel {channel_id!r}.")
    check_station(principal, channel.station_id or "", missing, needed)
    return channel


async def visible_experiment(
    session: AsyncSession, principal: Principal, experiment_id: int, needed: str = "viewer"
) -> Experiment:
    exp = await service.get_experiment(session, experiment_id)
    missing = ExperimentNotFound(f"No experiment {experiment_id}.")
    check_station(principal, exp.station_id, missing, needed)
    return exp


@router.get("/channels")
async def list_channels(
    device_id: str | None = Query(default=None, max_length=64),
    kind: str | None = Query(default=None, pattern="^(device|flow|controller)$"),
    station_id: str | None = Query(default=None, max_length=32),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, list[ChannelOut]]:
    async with ctx.db.session() as session:
        rows = await service.list_channels(
            session,
            device_id=device_id,
            kind=kind,
            station_id=station_id,
            visible_stations=principal.visible_stations,
        )
        return {"items": [service.channel_out(c) for c in rows]}


@router.get("/channels/{channel_id:path}", response_model=ChannelOut)
async def get_channel(
    channel_id: ChannelKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> ChannelOut:
    async with ctx.db.session() as session:
        return service.channel_out(await visible_channel(session, principal, channel_id))


@router.patch("/channels/{channel_id:path}", response_model=ChannelOut)
async def update_channel(
    channel_id: ChannelKey,
    body: ChannelUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> ChannelOut:
    async with ctx.db.session() as session:
        channel = await visible_channel(session, principal, channel_id, "admin")
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
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Raw points (oldest first, cursor-paged), or min/max/avg/count per bucket with `bucket=`."""
    async with ctx.db.session() as session:
        ch = await visible_channel(session, principal, channel)
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
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        ids = list(channel)
        if device_id:
            ids += [c.id for c in await service.list_channels(session, device_id=device_id)]
        ids = await service.visible_channel_ids(session, ids, principal.visible_stations)
        return {"items": await service.latest_values(session, ids)}


@router.post("/datapoints/batch", response_model=BatchResult)
async def post_batch(
    body: BatchRequest,
    request: Request,
    principal: Principal = Depends(telemetry_writer),
    ctx: AppContext = Depends(get_ctx),
) -> BatchResult:
    """The same items as the controller WebSocket, over HTTP (at most 500 per call).

    Callers: a device with its `X-Device-Token` (only its own `device:{id}/…` channels), a plugin
    controller with its `wsc_…` token (only its own `controller:{id}/…` channels, stored at its station),
    an API token with `api:write`, or a user with the member role or higher."""
    ingest = pipeline(ctx)
    own_channels_only = principal.kind in ("device", "controller")
    if own_channels_only:
        own = f"{principal.kind}:{principal.id}/"
        if any(not i.channel.startswith(own) for i in body.items):
            raise InsufficientRole(f"A {principal.kind} may only write its own channels ({own}…).")
    if principal.kind != "controller" and any(i.channel.startswith("controller:") for i in body.items):
        # A controller's channels belong to its station and carry its plugins' readings: only the
        # controller itself writes them (a member of another station must not feed that station's rules).
        raise InsufficientRole("controller:… channels are written only by their controller (its wsc_ token).")
    stations: dict[str, str] = {}
    async with ctx.db.session() as session:
        for device_id in {
            i.channel.split(":", 1)[1].split("/", 1)[0] for i in body.items if i.channel.startswith("device:")
        }:
            device = await devices_service.get_device(session, device_id)
            if principal.kind != "device":
                missing = DeviceNotFound(f"No device {device_id!r}.")
                check_station(principal, device.station_id, missing, "member")
            stations[device_id] = device.station_id
        if not own_channels_only and any(not i.channel.startswith("device:") for i in body.items):
            # Flow channels written over HTTP belong to the default station.
            default = ctx.default_station_id
            check_station(principal, default, StationNotFound(f"No station {default!r}."), "member")
    default_station = ctx.default_station_id
    if principal.kind == "controller" and principal.station_id:
        default_station = principal.station_id  # a controller's channels belong to its station
    stored = await ingest.write_items(
        [(i.channel, i.value, i.ts) for i in body.items], stations, default_station=default_station
    )
    async with ctx.db.session() as session:
        audit.record(
            session,
            actor=principal.actor,
            action="datapoints.batch",
            target=None,
            summary=f"{stored} of {len(body.items)} datapoints stored",
            ip=client_ip(request),
            station_id=_batch_station(stations, body, default_station),
        )
    return BatchResult(received=len(body.items), stored=stored, duplicates=len(body.items) - stored)


def _batch_station(stations: dict[str, str], body: BatchRequest, default: str) -> str | None:
    """The station an audit entry for this batch belongs to: the one station all its channels are in."""
    found = set(stations.values())
    if any(not i.channel.startswith("device:") for i in body.items):
        found.add(default)  # flow and controller channels written over HTTP belong to the default station
    return found.pop() if len(found) == 1 else None


# --- experiments ------------------------------------------------------------------------------------


@router.post("/experiments", response_model=ExperimentOut, status_code=201)
async def start_experiment(
    body: ExperimentCreate,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> ExperimentOut:
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "member")
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
    experiment_id: RowId,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> ExperimentOut:
    ingest = pipeline(ctx)
    async with ctx.db.session() as session:
        await visible_experiment(session, principal, experiment_id, "member")
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
    principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[ExperimentOut]]:
    visible = principal.visible_stations
    async with ctx.db.session() as session:
        rows = await service.list_experiments(session)
        return {
            "items": [service.experiment_out(e) for e in rows if visible is None or e.station_id in visible]
        }


@router.get("/experiments/{experiment_id}", response_model=ExperimentOut)
async def get_experiment(
    experiment_id: RowId,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> ExperimentOut:
    async with ctx.db.session() as session:
        return service.experiment_out(await visible_experiment(session, principal, experiment_id))


@router.get("/experiments/{experiment_id}/export.csv")
async def export_csv(
    experiment_id: RowId,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> StreamingResponse:
    async with ctx.db.session() as session:
        exp = await visible_experiment(session, principal, experiment_id)
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
        principal = await principal_from_token(ctx, token)
    except WaystationError:
        # Accept, then close with a clear code: a browser cannot read the status of a refused handshake.
        await websocket.accept()
        await websocket.close(code=4401, reason="authentication required")
        return
    auth = StreamAuth(ctx, token, principal)
    wanted = {c for c in websocket.query_params.get("channels", "").split(",") if c}
    await websocket.accept()
    sub = ctx.bus.subscribe(TypeFilter(["telemetry.batch"]), maxsize=100)
    pending: dict[str, dict[str, Any]] = {}
    interval = 1.0 / WS_MAX_PER_SECOND

    def merge(item: object) -> None:
        visible = auth.principal.visible_stations
        if visible is not None and getattr(item, "station_id", None) not in visible:
            return  # another station's telemetry
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
            if await auth.current() is None:
                await websocket.close(code=4401, reason="authentication expired")
                return
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
