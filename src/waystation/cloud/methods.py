"""The JSON-RPC methods the cloud may call (PROTOCOLS §7), with exactly its shapes.

The link speaks for one station (the default one, whose chip id the cloud claimed): every method sees
only that station's devices; a device of another station is answered as if it did not exist.

Business errors become application errors (-32000) whose `data.code` is the station's stable error code
(DEVICE_NOT_FOUND, DEVICE_DISABLED, …); parameters that do not fit, the device type's command schema
included, are -32602 with details in `data`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from waystation.cloud.jsonrpc import APPLICATION_ERROR, INVALID_PARAMS, Handler, RpcError
from waystation.cloud.notifications import NOTIFICATION_NAMES
from waystation.db import Database
from waystation.devices import service as device_service
from waystation.devices.runtime import DeviceRuntime
from waystation.devices.types import type_to_dict
from waystation.errors import (
    CommandInvalid,
    CommandUnknown,
    DeviceNotFound,
    Unprocessable,
    WaystationError,
)

CLOUD_ACTOR = "cloud"
SNAPSHOT_PAGE = 500

SetChannels = Callable[[list[str]], Awaitable[None]]


def rpc_error(exc: WaystationError) -> RpcError:
    data: dict[str, Any] = {"code": exc.code, "status": exc.status}
    if "errors" in exc.extra:
        data["errors"] = exc.extra["errors"]
    if isinstance(exc, CommandInvalid | CommandUnknown | Unprocessable):
        return RpcError(INVALID_PARAMS, f"Invalid params: {exc.detail}", data)
    return RpcError(APPLICATION_ERROR, exc.detail, data)


def _object(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: use an object")
    return params


def build_methods(
    db: Database, devices: DeviceRuntime | None, set_channels: SetChannels, station_id: str
) -> dict[str, Handler]:
    async def device_command(params: Any) -> Any:
        p = _object(params)
        device_id, command = p.get("deviceId"), p.get("command")
        if not isinstance(device_id, str) or not device_id or len(device_id) > 64:
            raise RpcError(INVALID_PARAMS, "Invalid params: deviceId must be a device id")
        if not isinstance(command, dict):
            raise RpcError(INVALID_PARAMS, 'Invalid params: command must be {"action": …, …params}')
        action = command.get("action")
        if not isinstance(action, str) or not action or len(action) > 64:
            raise RpcError(INVALID_PARAMS, "Invalid params: command.action must name the command")
        if devices is None:
            raise RpcError(
                APPLICATION_ERROR, "The device runtime is not running", {"code": "SERVICE_UNAVAILABLE"}
            )
        args = {k: v for k, v in command.items() if k != "action"}
        try:
            async with db.session() as session:
                device = await device_service.get_device(session, device_id)
                if device.station_id != station_id:
                    raise DeviceNotFound(f"No device {device_id!r}.")
            # The same path as POST /devices/{id}/commands: validated against the type, stored, audited.
            cmd = await devices.submit_command(device_id, action, args, CLOUD_ACTOR, None)
        except WaystationError as exc:
            raise rpc_error(exc) from exc
        return {"status": "ok", "requestId": cmd.request_id, "commandStatus": cmd.status}

    async def devices_snapshot(params: Any) -> Any:
        _object(params)
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        async with db.session() as session:
            while True:
                rows, cursor = await device_service.list_devices(
                    session, station_id=station_id, limit=SNAPSHOT_PAGE, cursor=cursor
                )
                items.extend(device_service.device_out(d).model_dump(mode="json") for d in rows)
                if cursor is None:
                    break
        return {"devices": items}

    async def device_types_list(params: Any) -> Any:
        _object(params)
        async with db.session() as session:
            return {"deviceTypes": [type_to_dict(t) for t in await device_service.list_types(session)]}

    async def set_active_channels(params: Any) -> Any:
        channels = _object(params).get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise RpcError(INVALID_PARAMS, "Invalid params: channels must be a list of names")
        unknown = sorted(set(channels) - set(NOTIFICATION_NAMES))
        if unknown:
            raise RpcError(
                INVALID_PARAMS,
                f"Invalid params: unknown channels {', '.join(unknown)}",
                {"known": list(NOTIFICATION_NAMES)},
            )
        await set_channels(sorted(set(channels), key=NOTIFICATION_NAMES.index))
        return {"ok": True}

    return {
        "device.command": device_command,
        "devices.snapshot": devices_snapshot,
        "device_types.list": device_types_list,
        "station.setActiveChannels": set_active_channels,
    }
