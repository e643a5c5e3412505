"""BLE provisioning use cases: register a device with fresh credentials and build what is written to it;
record how it ended (a failed provisioning removes the device it registered)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.broker import credentials as broker_credentials
from waystation.config import Settings
from waystation.db import Database, after_commit, emit
from waystation.devices import service as devices_service
from waystation.devices.models import Device
from waystation.devices.runtime import DeviceRuntime
from waystation.devices.schemas import DeviceCreate
from waystation.errors import DeviceNotFound
from waystation.provisioning import wifi
from waystation.provisioning.ble.jobs import Provisioning
from waystation.secrets_box import SecretBox
from waystation.telemetry import service as telemetry_service


@dataclass(frozen=True)
class Registered:
    device: Device
    payload: dict[str, Any]  # holds credentials: written once over BLE, never stored or logged


async def register(
    session: AsyncSession,
    settings: Settings,
    box: SecretBox,
    *,
    type_id: str,
    name: str | None,
    station_id: str,
    default_station_id: str,
) -> Registered:
    """Create the device, its device token and broker account (synced through the outbox) in the caller's
    transaction, and the payload of PROTOCOLS §8 for it. Raises before any change if Wi-Fi is unset."""
    network = await wifi.credentials(session, box)
    device = await devices_service.create_device(
        session, DeviceCreate(type=type_id, name=name, station_id=station_id), default_station_id
    )
    device_token = devices_service.issue_device_token(device)
    mqtt = await broker_credentials.issue_credentials(session, box, device.id)
    host, port, tls = broker_credentials.client_endpoint(settings)
    payload = {
        "ssid": network.ssid,
        "password": network.password,
        "mqtt_host": host,
        "mqtt_port": port,
        "device_id": device.id,
        "device_token": device_token,
        "station_id": device.station_id,
        "mqtt_username": mqtt.username,
        "mqtt_password": mqtt.password,
        "mqtt_client_id": mqtt.client_id,
        "mqtt_tls": tls,
    }
    return Registered(device, payload)


def result_event(job: Provisioning) -> dict[str, Any]:
    """`provisioning.result` (bus, SSE, WebSocket): ids and the outcome, never a credential."""
    return {
        "provisioning_id": job.id,
        "address": job.address,
        "device_id": job.device_id,
        "ok": job.state == "succeeded",
        "state": job.state,
        "reason": job.reason,
        "detail": job.detail,
    }


async def record_outcome(db: Database, runtime: DeviceRuntime | None, job: Provisioning) -> None:
    """Audit the outcome and publish `provisioning.result`; on failure remove the device and its broker
    account, so nothing half-provisioned stays behind and a retry starts clean."""
    async with db.session() as session:
        if job.state == "failed":
            await _remove_device(session, runtime, job.device_id)
        audit.record(
            session,
            actor=job.actor,
            action=f"provisioning.{job.state}",
            target=f"device:{job.device_id}",
            summary=(
                f"BLE provisioning of {job.address} succeeded"
                if job.state == "succeeded"
                else f"BLE provisioning of {job.address} failed ({job.reason}); device removed"
            ),
            ip=job.ip,
            station_id=job.station_id,
        )
        emit(session, "provisioning.result", result_event(job), job.station_id)


async def _remove_device(session: AsyncSession, runtime: DeviceRuntime | None, device_id: str) -> None:
    try:
        await devices_service.get_device(session, device_id)
    except DeviceNotFound:
        return  # an admin deleted it meanwhile
    await broker_credentials.device_removed(session, device_id)
    await devices_service.delete_device(session, device_id)
    await telemetry_service.delete_channels_of(session, "device", device_id)
    if runtime is not None:
        after_commit(session, lambda: runtime.device_removed(device_id))
