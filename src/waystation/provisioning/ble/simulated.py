"""The fake radio of `waystation ble-bridge --simulate`: a few advertising ESP32s whose firmware, once
written, really joins MQTT with the written credentials and speaks the device protocol (PROTOCOLS §2).

Some candidates misbehave on purpose, so every failure the station reports can be produced:
`WS-ESP32-FA11` refuses the write, `WS-ESP32-BAD0` garbles its MQTT password (the broker refuses it),
`WS-ESP32-0FF1` accepts the write but never comes online.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from waystation.config import MqttEndpoint, Settings
from waystation.provisioning.ble.messages import Advertisement
from waystation.provisioning.ble.radio import OnFound, RadioError, matches_service
from waystation.simulator.device import DeviceLogin, SimConfig, SimulatedDevice

log = logging.getLogger(__name__)

# What the firmware in docs/provisioning.md advertises: the provisioning service and, as its service
# data, a version byte followed by the device type in ASCII.
SERVICE_UUID: str = Settings.model_fields["ble_service_uuid"].default
CHARACTERISTIC_UUID: str = Settings.model_fields["ble_characteristic_uuid"].default
SERVICE_DATA_VERSION = 1
HEART_RATE_UUID = "0000180d-0000-1000-8000-00805f9b34fb"

Behaviour = Literal["ok", "write_fails", "garbles_password", "never_joins", "foreign"]


@dataclass(frozen=True)
class FakePeripheral:
    address: str
    name: str
    type: str
    rssi: int
    behaviour: Behaviour = "ok"


DEFAULT_PERIPHERALS = (
    FakePeripheral("24:0A:C4:3F:2A:01", "WS-ESP32-3F2A", "climate", -52),
    FakePeripheral("24:0A:C4:7B:10:02", "WS-ESP32-7B10", "light", -61),
    FakePeripheral("24:0A:C4:C4:D1:03", "WS-ESP32-C4D1", "pir", -70),
    FakePeripheral("24:0A:C4:FA:11:04", "WS-ESP32-FA11", "climate", -66, "write_fails"),
    FakePeripheral("24:0A:C4:BA:D0:05", "WS-ESP32-BAD0", "climate", -58, "garbles_password"),
    FakePeripheral("24:0A:C4:0F:F1:06", "WS-ESP32-0FF1", "climate", -75, "never_joins"),
    # Someone's heart-rate band: advertises another service, so the scan filter must drop it.
    FakePeripheral("F0:13:C3:55:00:07", "Polar H10 55", "other", -80, "foreign"),
)

REQUIRED_FIELDS = ("ssid", "password", "mqtt_host", "mqtt_port", "device_id", "station_id")
MAY_BE_EMPTY = frozenset({"password"})  # "" is an open Wi-Fi network


def service_data(peripheral: FakePeripheral) -> dict[str, str]:
    if peripheral.behaviour == "foreign":
        return {}
    return {SERVICE_UUID: (bytes([SERVICE_DATA_VERSION]) + peripheral.type.encode()).hex()}


class SimulatedRadio:
    def __init__(
        self,
        peripherals: tuple[FakePeripheral, ...] = DEFAULT_PERIPHERALS,
        advertise_interval: float = 0.5,
        state_interval: float = 5.0,
        heartbeat_interval: float = 30.0,
        give_up_seconds: float = 30.0,
        seed: int | None = None,
    ) -> None:
        self.peripherals = {p.address.upper(): p for p in peripherals}
        self.advertise_interval = advertise_interval
        self.state_interval = state_interval
        self.heartbeat_interval = heartbeat_interval
        self.give_up_seconds = give_up_seconds
        self._rng = random.Random(seed)
        self._scan: asyncio.Task[None] | None = None
        self._provisioned: set[str] = set()  # provisioned firmware stops advertising
        self._devices: dict[str, asyncio.Task[None]] = {}

    # --- scanning ------------------------------------------------------------------------------

    async def start_scan(self, service_uuid: str, on_found: OnFound) -> None:
        await self.stop_scan()
        self._scan = asyncio.create_task(self._advertise(service_uuid, on_found), name="sim-advertise")

    async def _advertise(self, service_uuid: str, on_found: OnFound) -> None:
        while True:
            for p in self.peripherals.values():
                if p.address in self._provisioned:
                    continue
                uuids = [HEART_RATE_UUID] if p.behaviour == "foreign" else [SERVICE_UUID]
                if not matches_service(uuids, service_uuid):
                    continue
                on_found(
                    Advertisement(
                        address=p.address,
                        name=p.name,
                        rssi=p.rssi + self._rng.randint(-3, 3),  # a radio's reading moves a little
                        service_uuids=uuids,
                        service_data=service_data(p),
                    )
                )
            await asyncio.sleep(self.advertise_interval)

    async def stop_scan(self) -> None:
        task, self._scan = self._scan, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- writing -------------------------------------------------------------------------------

    async def write(self, address: str, service_uuid: str, characteristic_uuid: str, data: bytes) -> None:
        await asyncio.sleep(0.05)  # connecting takes a moment on a real radio too
        p = self.peripherals.get(address.upper())
        if p is None or p.behaviour == "foreign":
            raise RadioError(f"device {address} not found")
        if service_uuid.lower() != SERVICE_UUID or characteristic_uuid.lower() != CHARACTERISTIC_UUID:
            raise RadioError(f"the device has no characteristic {characteristic_uuid} in {service_uuid}")
        if p.behaviour == "write_fails":
            raise RadioError("GATT write failed: ATT error 0x0e (unlikely error; simulated)")
        config = parse_payload(data)  # what the firmware does first; a bad payload is an ATT error
        self._provisioned.add(p.address)
        old = self._devices.pop(p.address, None)
        if old is not None:
            old.cancel()  # a second provisioning reboots the firmware with the new credentials
        if p.behaviour == "never_joins":
            return
        self._devices[p.address] = asyncio.create_task(self._run_firmware(p, config), name=f"sim-{p.name}")

    async def _run_firmware(self, p: FakePeripheral, config: dict[str, Any]) -> None:
        password = str(config.get("mqtt_password") or "")
        if p.behaviour == "garbles_password":
            password = password[::-1] + "!"  # a firmware bug: the station sees only refused logins
        endpoint = MqttEndpoint(embedded=False, host=str(config["mqtt_host"]), port=int(config["mqtt_port"]))
        device_id = str(config["device_id"])
        login = None
        if config.get("mqtt_username"):
            client_id = str(config.get("mqtt_client_id") or device_id)
            login = DeviceLogin(str(config["mqtt_username"]), password, client_id)
        device = SimulatedDevice(
            device_id,
            p.type,
            SimConfig(
                endpoint=endpoint,
                station_id=str(config["station_id"]),
                state_interval=self.state_interval,
                heartbeat_interval=self.heartbeat_interval,
            ),
            login=login,
        )
        log.info("%s joined Wi-Fi %r; connecting to MQTT as %s", p.name, config["ssid"], device_id)
        running = asyncio.create_task(device.run())
        try:
            await asyncio.sleep(self.give_up_seconds)
            if device.published == 0:
                # What the firmware of docs/provisioning.md does: never reached the broker, so it forgets
                # the credentials and advertises again instead of hammering the broker forever.
                log.info("%s could not log in; back to provisioning mode", p.name)
                self._provisioned.discard(p.address)
                return
            await running
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    async def close(self) -> None:
        await self.stop_scan()
        tasks = list(self._devices.values())
        self._devices.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _missing(config: dict[str, Any], key: str) -> bool:
    value = config.get(key)
    if key in MAY_BE_EMPTY:
        return not isinstance(value, str)  # required, but "" is a value
    return value in (None, "")


def parse_payload(data: bytes) -> dict[str, Any]:
    try:
        config = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RadioError("GATT write failed: ATT error 0x80 (payload is not JSON)") from exc
    if not isinstance(config, dict) or any(_missing(config, k) for k in REQUIRED_FIELDS):
        raise RadioError(f"GATT write failed: ATT error 0x80 (payload needs {', '.join(REQUIRED_FIELDS)})")
    try:
        int(config["mqtt_port"])
    except (TypeError, ValueError) as exc:
        raise RadioError("GATT write failed: ATT error 0x80 (mqtt_port is not a number)") from exc
    return config
