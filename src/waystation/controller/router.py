"""HTTP and WebSocket routes of plugin controllers (PROTOCOLS §9): controllers and their tokens, plugin
instances, channel mappings, actuator writes, the controller's own configuration, and
`/api/v1/ws/controller` where a controller streams readings and receives writes."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response, WebSocket, WebSocketDisconnect
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, controller_principal, get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.controller import service
from waystation.controller.hub import ControllerConnection, ControllerHub
from waystation.controller.models import Controller
from waystation.controller.schemas import (
    ChannelWrite,
    ChannelWriteResult,
    ControllerCreate,
    ControllerCreated,
    ControllerOut,
    ControllerToken,
    ControllerUpdate,
    InstanceCreate,
    InstanceOut,
    InstanceUpdate,
    MappingCreate,
    MappingOut,
    MappingUpdate,
)
from waystation.db import after_commit
from waystation.errors import (
    ChannelNotFound,
    ChannelNotWritable,
    ControllerNotFound,
    ServiceUnavailable,
    StationNotFound,
    TokenInvalid,
    ValueOutOfRange,
    WaystationError,
)
from waystation.security.params import ChannelKey, NameKey, RowId
from waystation.security.ratelimit import limit
from waystation.telemetry.schemas import BatchItem

log = logging.getLogger(__name__)

router = APIRouter(tags=["controllers"])
ws_router = APIRouter()

ControllerKey = Annotated[str, Path(min_length=1, max_length=64)]

MAX_ITEMS = 500  # per datapoints message, as for POST /api/v1/datapoints/batch
_items = TypeAdapter(list[BatchItem])

# Close codes of the controller socket (4000-4999 are the application's).
CLOSE_AUTH = 4401  # no or a wrong token
CLOSE_REPLACED = 4409  # a newer connection of the same controller took over
CLOSE_GONE = 4410  # the controller was deleted or its token replaced


def hub_of(ctx: AppContext) -> ControllerHub:
    if ctx.controllers is None:
        raise ServiceUnavailable("The controller hub is not running.")
    return ctx.controllers


def out(ctx: AppContext, controller: Controller) -> ControllerOut:
    conn = ctx.controllers.get(controller.id) if ctx.controllers else None
    return service.controller_out(
        controller,
        connected_since=conn.connected_since if conn else None,
        status=conn.status if conn else None,
    )


async def visible_controller(
    session: AsyncSession, principal: Principal, controller_id: str, needed: str = "viewer"
) -> Controller:
    controller = await service.get_controller(session, controller_id)
    missing = ControllerNotFound(f"No controller {controller_id!r}.")
    check_station(principal, controller.station_id, missing, needed)
    return controller


def config_changed(session: AsyncSession, ctx: AppContext, controller_id: str) -> None:
    """After this unit of work commits, tell the controller to fetch its configuration again."""
    hub = ctx.controllers
    if hub is not None:
        after_commit(session, lambda: hub.notify_config_changed(controller_id))


# --- controllers --------------------------------------------------------------------------------------


@router.post(
    "/controllers",
    response_model=ControllerCreated,
    status_code=201,
    dependencies=[Depends(limit("token_create", per="caller"))],
)
async def create_controller(
    body: ControllerCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> ControllerCreated:
    """A controller at one station (the default one unless `station_id` says otherwise); the answer
    holds its token, shown this once."""
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "admin")
    async with ctx.db.session() as session:
        controller, token = await service.create_controller(
            session,
            controller_id=body.id,
            name=body.name or body.id,
            station_id=station_id,
            actor=principal.actor,
        )
        audit.record(
            session,
            actor=principal.actor,
            action="controller.create",
            target=f"controller:{controller.id}",
            summary=f"created {controller.name!r}",
            ip=client_ip(request),
            station_id=station_id,
        )
        return ControllerCreated(**out(ctx, controller).model_dump(), token=token)


@router.get("/controllers")
async def list_controllers(
    principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[ControllerOut]]:
    async with ctx.db.session() as session:
        rows = await service.list_controllers(session, principal.visible_stations)
        return {"items": [out(ctx, c) for c in rows]}


async def current_controller(request: Request, ctx: AppContext = Depends(get_ctx)) -> Principal:
    principal = await controller_principal(request, ctx)
    if principal is None:
        raise TokenInvalid("Send the controller token: `Authorization: Bearer wsc_…`.")
    return principal


@router.get("/controllers/me/config")
async def my_config(
    principal: Principal = Depends(current_controller), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """The calling controller's plugin instances and channel mappings (controller token)."""
    async with ctx.db.session() as session:
        controller = await service.get_controller(session, str(principal.id))
        # Channels first written over the HTTP fallback get their mapped unit here (the controller
        # fetches its configuration on every reconnect attempt).
        await service.apply_units(session, await service.mapped_units(session, controller.id))
        return await service.controller_config(session, controller, ctx.box)


@router.get("/controllers/{controller_id}", response_model=ControllerOut)
async def get_controller(
    controller_id: ControllerKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> ControllerOut:
    async with ctx.db.session() as session:
        return out(ctx, await visible_controller(session, principal, controller_id))


@router.patch("/controllers/{controller_id}", response_model=ControllerOut)
async def update_controller(
    controller_id: ControllerKey,
    body: ControllerUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> ControllerOut:
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        service.rename(controller, body.name)
        audit.record(
            session,
            actor=principal.actor,
            action="controller.update",
            target=f"controller:{controller.id}",
            summary=f"renamed to {body.name!r}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        return out(ctx, controller)


@router.delete("/controllers/{controller_id}", status_code=204)
async def delete_controller(
    controller_id: ControllerKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """Removes the controller with its plugin instances and mappings; its channels and their data stay."""
    hub = hub_of(ctx)
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        await session.delete(controller)
        audit.record(
            session,
            actor=principal.actor,
            action="controller.delete",
            target=f"controller:{controller_id}",
            summary=f"deleted {controller.name!r}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        after_commit(session, lambda: hub.disconnect(controller_id, CLOSE_GONE, "controller deleted"))
    return Response(status_code=204)


@router.post(
    "/controllers/{controller_id}/token",
    response_model=ControllerToken,
    dependencies=[Depends(limit("token_create", per="caller"))],
)
async def rotate_token(
    controller_id: ControllerKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> ControllerToken:
    """A new token for the controller, shown once; the old one stops working and its socket is closed."""
    hub = hub_of(ctx)
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        token = service.rotate_token(controller)
        audit.record(
            session,
            actor=principal.actor,
            action="controller.token",
            target=f"controller:{controller_id}",
            summary="issued a new token",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        after_commit(session, lambda: hub.disconnect(controller_id, CLOSE_GONE, "token replaced"))
        return ControllerToken(id=controller.id, token_prefix=controller.token_prefix, token=token)


@router.get("/controllers/{controller_id}/config")
async def get_config(
    controller_id: ControllerKey,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """What the controller receives from `GET /controllers/me/config` (admin: it holds plugin configs)."""
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        return await service.controller_config(session, controller, ctx.box)


# --- plugin instances (admin: their config may hold device credentials) --------------------------------


@router.get("/controllers/{controller_id}/plugins")
async def list_instances(
    controller_id: ControllerKey,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, list[InstanceOut]]:
    async with ctx.db.session() as session:
        await visible_controller(session, principal, controller_id, "admin")
        instances = await service.list_instances(session, controller_id)
        return {"items": [service.instance_out(i, ctx.box) for i in instances]}


@router.post("/controllers/{controller_id}/plugins", response_model=InstanceOut, status_code=201)
async def create_instance(
    controller_id: ControllerKey,
    body: InstanceCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> InstanceOut:
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        instance = await service.create_instance(session, controller_id, body, ctx.box)
        audit.record(
            session,
            actor=principal.actor,
            action="plugin_instance.create",
            target=f"controller:{controller_id}/plugins/{instance.name}",
            summary=f"added {instance.name!r} ({instance.plugin}, every {instance.interval_seconds:g}s)",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        config_changed(session, ctx, controller_id)
        return service.instance_out(instance, ctx.box)


@router.get("/controllers/{controller_id}/plugins/{name}", response_model=InstanceOut)
async def get_instance(
    controller_id: ControllerKey,
    name: NameKey,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> InstanceOut:
    async with ctx.db.session() as session:
        await visible_controller(session, principal, controller_id, "admin")
        return service.instance_out(await service.get_instance(session, controller_id, name), ctx.box)


@router.patch("/controllers/{controller_id}/plugins/{name}", response_model=InstanceOut)
async def update_instance(
    controller_id: ControllerKey,
    name: NameKey,
    body: InstanceUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> InstanceOut:
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        instance = await service.get_instance(session, controller_id, name)
        changed = service.update_instance(instance, body, ctx.box)
        audit.record(
            session,
            actor=principal.actor,
            action="plugin_instance.update",
            target=f"controller:{controller_id}/plugins/{name}",
            summary=f"changed {', '.join(changed) or 'nothing'}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        config_changed(session, ctx, controller_id)
        return service.instance_out(instance, ctx.box)


@router.delete("/controllers/{controller_id}/plugins/{name}", status_code=204)
async def delete_instance(
    controller_id: ControllerKey,
    name: NameKey,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """Removes the instance and its channel mappings; the controller puts it in its safe state first."""
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        instance = await service.get_instance(session, controller_id, name)
        await session.delete(instance)
        audit.record(
            session,
            actor=principal.actor,
            action="plugin_instance.delete",
            target=f"controller:{controller_id}/plugins/{name}",
            summary=f"removed {name!r}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        config_changed(session, ctx, controller_id)
    return Response(status_code=204)


# --- channel mappings -----------------------------------------------------------------------------------


@router.get("/controllers/{controller_id}/mappings")
async def list_mappings(
    controller_id: ControllerKey,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, list[MappingOut]]:
    async with ctx.db.session() as session:
        await visible_controller(session, principal, controller_id)
        rows = await service.list_mappings(session, controller_id)
        return {"items": [service.mapping_out(m, name) for m, name in rows]}


@router.post("/controllers/{controller_id}/mappings", response_model=MappingOut, status_code=201)
async def create_mapping(
    controller_id: ControllerKey,
    body: MappingCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MappingOut:
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        mapping, instance = await service.create_mapping(session, controller_id, body)
        audit.record(
            session,
            actor=principal.actor,
            action="channel_mapping.create",
            target=f"channel:{service.channel_id(controller_id, mapping.key)}",
            summary=f"{instance}/{mapping.plugin_channel} as {mapping.direction}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        config_changed(session, ctx, controller_id)
        return service.mapping_out(mapping, instance)


@router.patch("/controllers/{controller_id}/mappings/{mapping_id}", response_model=MappingOut)
async def update_mapping(
    controller_id: ControllerKey,
    mapping_id: RowId,
    body: MappingUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> MappingOut:
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        mapping, instance = await service.get_mapping(session, controller_id, mapping_id)
        changed = await service.update_mapping(session, mapping, body)
        audit.record(
            session,
            actor=principal.actor,
            action="channel_mapping.update",
            target=f"channel:{service.channel_id(controller_id, mapping.key)}",
            summary=f"changed {', '.join(changed) or 'nothing'}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        config_changed(session, ctx, controller_id)
        return service.mapping_out(mapping, instance)


@router.delete("/controllers/{controller_id}/mappings/{mapping_id}", status_code=204)
async def delete_mapping(
    controller_id: ControllerKey,
    mapping_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """The channel and its data stay; the controller stops sending (or accepting writes for) it."""
    async with ctx.db.session() as session:
        controller = await visible_controller(session, principal, controller_id, "admin")
        mapping, _ = await service.get_mapping(session, controller_id, mapping_id)
        await session.delete(mapping)
        audit.record(
            session,
            actor=principal.actor,
            action="channel_mapping.delete",
            target=f"channel:{service.channel_id(controller_id, mapping.key)}",
            summary=f"unmapped {mapping.plugin_channel!r}",
            ip=client_ip(request),
            station_id=controller.station_id,
        )
        config_changed(session, ctx, controller_id)
    return Response(status_code=204)


# --- actuator writes ------------------------------------------------------------------------------------


@router.post("/channels/{channel_id:path}/write", response_model=ChannelWriteResult)
async def write_channel(
    channel_id: ChannelKey,
    body: ChannelWrite,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> ChannelWriteResult:
    """Set an output channel of a controller: the station sends the value to the connected controller,
    which hands it to the plugin, and answers once the plugin accepted it."""
    hub = hub_of(ctx)
    kind, _, rest = channel_id.partition(":")
    controller_id, _, key = rest.partition("/")
    missing = ChannelNotFound(f"No mapped channel {channel_id!r}.")
    if kind != "controller" or not controller_id or not key:
        raise ChannelNotWritable(
            f"Only output channels of controllers (controller:{{id}}/{{key}}) can be written; "
            f"{channel_id!r} is not one. Devices take commands: POST /api/v1/devices/{{id}}/commands."
        )
    async with ctx.db.session() as session:
        controller = await session.get(Controller, controller_id)
        if controller is None:
            raise missing
        check_station(principal, controller.station_id, missing, "member")
        mapping = await service.find_mapping(session, controller_id, key)
        if mapping is None:
            raise missing
        if mapping.direction != "output":
            raise ChannelNotWritable(f"{channel_id!r} is an input channel; only outputs can be written.")
        low, high = mapping.min_value, mapping.max_value
        if (low is not None and body.value < low) or (high is not None and body.value > high):
            raise ValueOutOfRange(f"{body.value} is outside the range of {channel_id!r} ({low} to {high}).")
        station_id = controller.station_id
    error: WaystationError | None = None
    try:
        await hub.write(controller_id, channel_id, body.value)
    except WaystationError as exc:
        error = exc
    async with ctx.db.session() as session:
        audit.record(
            session,
            actor=principal.actor,
            action="channel.write",
            target=f"channel:{channel_id}",
            summary=f"set to {body.value}" + (f": failed ({error.code})" if error else ""),
            ip=client_ip(request),
            station_id=station_id,
        )
    if error is not None:
        raise error
    return ChannelWriteResult(channel=channel_id, value=body.value, controller_id=controller_id)


# --- the controller's WebSocket ---------------------------------------------------------------------------


@ws_router.websocket("/api/v1/ws/controller")
async def controller_socket(websocket: WebSocket) -> None:
    """A controller streams `datapoints` (acknowledged after the commit), reports `status`, and answers
    the `write` requests it gets with `write_result`. Authenticated with its `wsc_…` token."""
    ctx: AppContext = websocket.app.state.ctx
    header = websocket.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    try:
        async with ctx.db.session() as session:
            controller = await service.authenticate(session, token)
            await service.mark_connected(session, controller.id)
    except WaystationError as exc:
        # Accept, then close with a clear code and reason: a refused handshake tells the client nothing.
        await websocket.accept()
        await websocket.close(code=CLOSE_AUTH, reason=exc.detail[:120])
        return
    hub = ctx.controllers
    if hub is None:
        await websocket.close(code=1013)  # try again later
        return
    await websocket.accept()
    conn = ControllerConnection(controller.id, controller.station_id, websocket)
    previous = hub.attach(conn)
    if previous is not None:
        await previous.close(CLOSE_REPLACED, "replaced by a newer connection")
    log.info("controller %s connected", controller.id)
    try:
        while not conn.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text") or message.get("bytes") or b""
            await _handle(ctx, conn, raw)
    except WebSocketDisconnect:
        pass
    except Exception:  # the socket closed under a send, or was closed from our side (replaced, deleted)
        log.debug("controller %s socket ended", controller.id, exc_info=True)
    finally:
        hub.detach(conn)
        log.info("controller %s disconnected", controller.id)


async def _handle(ctx: AppContext, conn: ControllerConnection, raw: str | bytes) -> None:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        await _error(conn, None, "VALIDATION_FAILED", "Messages are JSON objects.", retry=False)
        return
    if not isinstance(message, dict):
        await _error(conn, None, "VALIDATION_FAILED", "Messages are JSON objects.", retry=False)
        return
    kind = message.get("type")
    if kind == "datapoints":
        await _datapoints(ctx, conn, message)
    elif kind == "write_result":
        conn.resolve(message)
    elif kind == "status":
        status = message.get("status")
        # Only kept in memory and shown in GET /controllers/{id}; bounded so a bad client cannot bloat it.
        if isinstance(status, dict) and len(raw) <= 64 * 1024:
            conn.status = status
    else:
        await _error(
            conn, message.get("seq"), "VALIDATION_FAILED", f"Unknown message type {kind!r}.", retry=False
        )


async def _datapoints(ctx: AppContext, conn: ControllerConnection, message: dict[str, Any]) -> None:
    seq = message.get("seq")
    items = message.get("items")
    if not isinstance(items, list):
        await _error(conn, seq, "VALIDATION_FAILED", "`items` must be a list.", retry=False)
        return
    if len(items) > MAX_ITEMS:
        await _error(
            conn,
            seq,
            "VALIDATION_FAILED",
            f"A datapoints message holds at most {MAX_ITEMS} items; this one has {len(items)}. "
            f"Nothing was stored: send them in smaller messages.",
            retry=False,
        )
        return
    try:
        parsed = _items.validate_python(items)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        await _error(conn, seq, "VALIDATION_FAILED", f"items.{where}: {first['msg']}", retry=False)
        return
    own = f"controller:{conn.controller_id}/"
    foreign = next((i.channel for i in parsed if not i.channel.startswith(own)), None)
    if foreign is not None:
        await _error(
            conn,
            seq,
            "INSUFFICIENT_ROLE",
            f"A controller may only write its own channels ({own}…), not {foreign!r}. Nothing was stored.",
            retry=False,
        )
        return
    ingest = ctx.ingest
    if ingest is None:
        await _error(conn, seq, "SERVICE_UNAVAILABLE", "The ingest pipeline is not running.", retry=True)
        return
    try:
        stored = await ingest.write_items(
            [(i.channel, i.value, i.ts) for i in parsed], {}, default_station=conn.station_id
        )
        await _apply_units(ctx, conn, {i.channel for i in parsed})
    except Exception:
        log.warning(
            "controller %s: storing %d datapoints failed", conn.controller_id, len(parsed), exc_info=True
        )
        await _error(
            conn,
            seq,
            "DATABASE_UNAVAILABLE",
            "The datapoints could not be stored; send them again.",
            retry=True,
        )
        return
    await conn.send(
        {
            "type": "ack",
            "seq": seq,
            "count": len(parsed),
            "stored": stored,
            "duplicates": len(parsed) - stored,
        }
    )


async def _apply_units(ctx: AppContext, conn: ControllerConnection, channels: set[str]) -> None:
    """Channels written for the first time on this connection get the unit of their mapping (the first
    reading may have just created the channel row)."""
    new = channels - conn.units_applied
    if not new:
        return
    async with ctx.db.session() as session:
        if conn.units is None:
            conn.units = await service.mapped_units(session, conn.controller_id)
        await service.apply_units(session, {c: conn.units.get(c) for c in new})
    conn.units_applied |= new


async def _error(conn: ControllerConnection, seq: Any, code: str, message: str, *, retry: bool) -> None:
    """An error frame. `retry` tells the controller whether sending the same message again can work."""
    await conn.send({"type": "error", "seq": seq, "code": code, "message": message, "retry": retry})
