"""HTTP and WebSocket routes of BLE provisioning (PROTOCOLS §8) and the agent's Wi-Fi credentials.

Provisioning is for station admins (and owners): watching candidates already starts the radio, and a
candidate is one step from joining the station. Only the station agent sets and reads the Wi-Fi password.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, field_validator

from waystation.audit import service as audit
from waystation.auth.deps import (
    StreamAuth,
    check_station,
    client_ip,
    current_principal,
    get_ctx,
    principal_from_token,
    require,
)
from waystation.auth.roles import Principal, role_at_least
from waystation.context import AppContext
from waystation.db import after_commit
from waystation.devices import service as devices_service
from waystation.errors import (
    BleProvisioningDisabled,
    BleProvisioningOnLeader,
    CandidateNotFound,
    InsufficientRole,
    ProvisioningInProgress,
    ProvisioningNotFound,
    StationNotFound,
    WaystationError,
)
from waystation.provisioning import wifi
from waystation.provisioning.ble import service
from waystation.provisioning.ble.jobs import Provisioning
from waystation.provisioning.ble.manager import Candidate, ProvisioningManager

router = APIRouter(tags=["provisioning"])
ws_router = APIRouter()


def manager(ctx: AppContext) -> ProvisioningManager:
    if ctx.provisioning_manager is None:
        raise BleProvisioningDisabled(
            "BLE provisioning is off: set WAYSTATION_BLE_ENABLED=true (or WAYSTATION_BLE_SIMULATE=true)."
        )
    if not_on_leader := _follower_note(ctx):
        raise BleProvisioningOnLeader(not_on_leader)
    return ctx.provisioning_manager


def _follower_note(ctx: AppContext) -> str | None:
    """With several workers the manager runs on the leader only: say so, instead of answering with the
    idle manager of a follower."""
    if ctx.cluster is None or ctx.cluster.is_leader:
        return None
    return (
        f"BLE provisioning runs on the leader worker; this is worker {ctx.cluster.worker}. "
        "Send provisioning requests to the leader (GET /api/v1/status/cluster names it)."
    )


async def require_agent(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.kind != "agent":
        raise InsufficientRole("Only the station agent (WAYSTATION_AGENT_TOKEN) may use this route.")
    return principal


class WifiIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ssid: str = Field(min_length=1, max_length=wifi.MAX_SSID_BYTES)  # bytes checked below
    password: str = Field(default="", max_length=wifi.PSK_HEX_LENGTH, repr=False)

    @field_validator("ssid")
    @classmethod
    def _ssid_fits(cls, value: str) -> str:
        return wifi.check_ssid(value)

    @field_validator("password")
    @classmethod
    def _password_fits(cls, value: str) -> str:
        return wifi.check_password(value)


class WifiStatus(BaseModel):
    configured: bool
    ssid: str | None = None
    updated_at: datetime | None = None


class WifiOut(BaseModel):
    ssid: str
    password: str
    updated_at: datetime


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # PROTOCOLS: unknown fields are ignored on input
    address: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=120)
    type: str = Field(min_length=1, max_length=64)
    station_id: str | None = Field(default=None, max_length=32)


# --- the agent's Wi-Fi credentials -----------------------------------------------------------------


@router.put("/agent/wifi", response_model=WifiStatus)
async def set_agent_wifi(
    body: WifiIn,
    request: Request,
    principal: Principal = Depends(require_agent),
    ctx: AppContext = Depends(get_ctx),
) -> WifiStatus:
    """The Wi-Fi network devices join after BLE provisioning. The password is sealed at rest."""
    async with ctx.db.session() as session:
        await wifi.set_wifi(session, ctx.box, body.ssid, body.password)
        audit.record(
            session,
            actor=principal.actor,
            action="provisioning.wifi_set",
            target="wifi",
            summary=f"Wi-Fi network for provisioning set to {body.ssid!r}",
            ip=client_ip(request),
        )
        row = await wifi.configured(session)
        return WifiStatus(configured=True, ssid=body.ssid, updated_at=row.updated_at if row else None)


@router.get("/agent/wifi", response_model=WifiOut)
async def get_agent_wifi(
    _: Principal = Depends(require_agent), ctx: AppContext = Depends(get_ctx)
) -> WifiOut:
    async with ctx.db.session() as session:
        creds = await wifi.credentials(session, ctx.box)
    return WifiOut(ssid=creds.ssid, password=creds.password, updated_at=creds.updated_at)


@router.get("/provisioning/wifi", response_model=WifiStatus)
async def provisioning_wifi(
    _: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> WifiStatus:
    """Whether devices can be provisioned yet, and to which network; never the password."""
    async with ctx.db.session() as session:
        row = await wifi.configured(session)
        if row is None:
            return WifiStatus(configured=False)
        return WifiStatus(configured=True, ssid=row.ssid, updated_at=row.updated_at)


# --- provisioning ----------------------------------------------------------------------------------


@router.get("/provisioning/status")
async def provisioning_status(
    _: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """The bridge (running, starting, restarting), the scan, connected clients and candidates."""
    return manager(ctx).status()


@router.get("/provisioning/candidates")
async def list_candidates(
    _: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """The devices seen by the current scan (empty while no provisioning WebSocket client is connected)."""
    mgr = manager(ctx)
    return {"scanning": mgr.scanning, "items": [c.public() for c in mgr.candidates.values()]}


@router.post("/provisioning/add", status_code=202)
async def add_device(
    body: AddRequest,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Register the device, write its Wi-Fi and MQTT credentials over BLE and wait for it to join;
    follow it with `GET /api/v1/provisioning/{id}` or the provisioning WebSocket."""
    mgr = manager(ctx)
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "admin")
    candidate = mgr.candidate(body.address)
    if candidate is None:
        raise CandidateNotFound(
            f"No candidate {body.address!r} in the current scan; keep a provisioning WebSocket open "
            "(it runs the scan) and pick an address it reported."
        )
    # Reserved before the first await: two concurrent requests for one address cannot both register.
    if not mgr.reserve(candidate.address):
        raise ProvisioningInProgress(f"{candidate.address} is being provisioned already.")
    try:
        job, payload = await _register(ctx, principal, body, candidate, station_id, client_ip(request))
        # Committed: the device exists and its broker account is on its way before anything is written.
        mgr.start(job, payload)
    finally:
        mgr.release(candidate.address)  # start() made the job busy; on failure the address is free again
    return job.public()


async def _register(
    ctx: AppContext,
    principal: Principal,
    body: AddRequest,
    candidate: Candidate,
    station_id: str,
    ip: str | None,
) -> tuple[Provisioning, dict[str, Any]]:
    """Register the device with fresh credentials and audit the request, in one transaction."""
    async with ctx.db.session() as session:
        await devices_service.get_type(session, body.type)  # 422 before the Wi-Fi check
        registered = await service.register(
            session,
            ctx.settings,
            ctx.box,
            type_id=body.type,
            name=body.name or candidate.name,
            station_id=station_id,
            default_station_id=ctx.default_station_id,
        )
        device = registered.device
        audit.record(
            session,
            actor=principal.actor,
            action="provisioning.add",
            target=f"device:{device.id}",
            summary=f"BLE provisioning of {candidate.address} as {device.type} {device.name!r} started",
            ip=ip,
            station_id=device.station_id,
        )
        if ctx.devices is not None:
            rt, device_id, type_id = ctx.devices, device.id, device.type
            after_commit(session, lambda: rt.device_added(device_id, station_id, type_id))
        job = Provisioning(
            address=candidate.address,
            device_id=device.id,
            station_id=device.station_id,
            actor=principal.actor,
            ip=ip,
        )
    return job, registered.payload


@router.get("/provisioning/{provisioning_id}")
async def get_provisioning(
    provisioning_id: str = Path(min_length=1, max_length=40),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    job = manager(ctx).job(provisioning_id)
    missing = ProvisioningNotFound(f"No provisioning {provisioning_id!r}.")
    if job is None:
        raise missing
    check_station(principal, job.station_id, missing, "admin")
    return job.public()


# --- the provisioning WebSocket --------------------------------------------------------------------


@ws_router.websocket("/api/v1/ws/provisioning")
async def provisioning_socket(websocket: WebSocket) -> None:
    """Candidates, scan state, progress and results. While at least one client is connected the bridge
    scans. The access token may come as `?access_token=` (browsers cannot set WebSocket headers)."""
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
    await websocket.accept()
    if not role_at_least(principal.role, "admin"):
        await websocket.close(code=4403, reason="provisioning needs the admin role")
        return
    mgr = ctx.provisioning_manager
    if mgr is None:
        await websocket.close(code=4409, reason="BLE provisioning is not enabled")
        return
    if _follower_note(ctx):
        await websocket.close(code=4503, reason="BLE provisioning runs on the leader worker")
        return
    auth = StreamAuth(ctx, token, principal)
    feed = mgr.connect(principal.visible_stations)

    async def pump() -> None:
        while True:
            message = await feed.get()
            current = await auth.current()
            if current is None or not role_at_least(current.role, "admin"):
                await websocket.close(code=4401, reason="authentication expired")
                return
            feed.visible_stations = current.visible_stations
            await websocket.send_text(orjson.dumps(message).decode())

    async def receive() -> None:
        while True:
            await websocket.receive_text()  # clients may send pings; anything else is ignored

    tasks = [asyncio.create_task(t) for t in (pump(), receive())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        mgr.disconnect(feed)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
