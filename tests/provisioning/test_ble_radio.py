"""The bleak adapter with only the radio replaced: fake `BleakScanner` and `BleakClient` stand-ins that
hand it bleak's own `BLEDevice` and `AdvertisementData`, and the bridge running on top of it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from tests.helpers import wait_for
from waystation.provisioning.ble.bridge import Bridge
from waystation.provisioning.ble.messages import Advertisement
from waystation.provisioning.ble.radio import BleakRadio, RadioError

SERVICE = "b8a0a000-5753-4e90-8d33-7761797374a1"
CHAR = "b8a0a001-5753-4e90-8d33-7761797374a1"


def advertisement(uuids: list[str], name: str | None = "WS-ESP32-3F2A", rssi: int = -60) -> AdvertisementData:
    return AdvertisementData(
        local_name=name,
        manufacturer_data={},
        service_data={SERVICE: b"\x01climate"} if SERVICE in [u.lower() for u in uuids] else {},
        service_uuids=uuids,
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )


class FakeScanner:
    instances: list[FakeScanner] = []

    def __init__(self, detection_callback: Any = None, service_uuids: list[str] | None = None) -> None:
        self.callback = detection_callback
        self.service_uuids = service_uuids
        self.started = False
        self.stopped = False
        self.fail_start: Exception | None = None
        FakeScanner.instances.append(self)

    async def start(self) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class FakeCharacteristic:
    pass


class FakeService:
    def __init__(self, chars: set[str]) -> None:
        self.chars = chars

    def get_characteristic(self, uuid: str) -> FakeCharacteristic | None:
        return FakeCharacteristic() if uuid in self.chars else None


class FakeServices:
    def __init__(self, layout: dict[str, set[str]]) -> None:
        self.layout = layout

    def get_service(self, uuid: str) -> FakeService | None:
        return FakeService(self.layout[uuid]) if uuid in self.layout else None


class FakeClient:
    """Connects on `async with`, exposes a GATT table and records writes."""

    layout: dict[str, set[str]] = {SERVICE: {CHAR}}
    connect_error: Exception | None = None
    write_error: Exception | None = None
    made: list[FakeClient] = []

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout
        self.writes: list[tuple[str, bytes, bool | None]] = []
        self.connected = False
        self.services = FakeServices(self.layout)
        FakeClient.made.append(self)

    async def __aenter__(self) -> FakeClient:
        if self.connect_error is not None:
            raise self.connect_error
        self.connected = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.connected = False

    async def write_gatt_char(self, char: str, data: bytes, response: bool | None = None) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.writes.append((char, bytes(data), response))


@pytest.fixture(autouse=True)
def _fresh_fakes() -> None:
    FakeScanner.instances = []
    FakeClient.made = []
    FakeClient.layout = {SERVICE: {CHAR}}
    FakeClient.connect_error = None
    FakeClient.write_error = None


def radio() -> BleakRadio:
    return BleakRadio(scanner_factory=FakeScanner, client_factory=FakeClient, connect_timeout=7.0)


async def test_scan_filters_by_service_uuid_and_reports_advertisements() -> None:
    r = radio()
    found: list[Advertisement] = []
    await r.start_scan(SERVICE, found.append)
    scanner = FakeScanner.instances[-1]
    assert scanner.started and scanner.service_uuids == [SERVICE]
    device = BLEDevice("24:0A:C4:3F:2A:01", "fallback-name", details=None)
    scanner.callback(device, advertisement([SERVICE.upper()], rssi=-51))
    scanner.callback(device, advertisement(["0000180d-0000-1000-8000-00805f9b34fb"]))  # other service
    scanner.callback(device, advertisement([SERVICE], name=None))
    assert [a.rssi for a in found] == [-51, -60]
    assert found[0].address == "24:0A:C4:3F:2A:01" and found[0].name == "WS-ESP32-3F2A"
    assert found[0].service_data == {SERVICE: b"\x01climate".hex()}
    assert found[1].name == "fallback-name"  # no local name in the advertisement: the device's
    await r.stop_scan()
    assert scanner.stopped
    await r.close()


async def test_scan_that_cannot_start_is_a_radio_error() -> None:
    class NoAdapter(FakeScanner):
        async def start(self) -> None:
            raise BleakError("No Bluetooth adapters found.")

    r = BleakRadio(scanner_factory=NoAdapter, client_factory=FakeClient)
    with pytest.raises(RadioError, match="No Bluetooth adapters"):
        await r.start_scan(SERVICE, lambda _: None)


async def test_write_goes_to_the_characteristic_with_response() -> None:
    r = radio()
    await r.write("24:0A:C4:3F:2A:01", SERVICE, CHAR, b'{"ssid":"x"}')
    client = FakeClient.made[-1]
    assert client.address == "24:0A:C4:3F:2A:01" and client.timeout == 7.0
    assert client.writes == [(CHAR, b'{"ssid":"x"}', True)]
    assert not client.connected  # disconnected after the write


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda: setattr(FakeClient, "layout", {}), "no provisioning service"),
        (lambda: setattr(FakeClient, "layout", {SERVICE: set()}), "no characteristic"),
        (lambda: setattr(FakeClient, "connect_error", TimeoutError()), "timed out"),
        (lambda: setattr(FakeClient, "connect_error", BleakError("Device not found")), "Device not found"),
        (lambda: setattr(FakeClient, "write_error", BleakError("ATT error 0x0e")), "ATT error 0x0e"),
    ],
)
async def test_write_failures_become_radio_errors(setup: Any, message: str) -> None:
    setup()
    with pytest.raises(RadioError, match=message):
        await radio().write("24:0A:C4:3F:2A:01", SERVICE, CHAR, b"{}")


async def test_oversized_payload_is_refused_before_connecting() -> None:
    with pytest.raises(RadioError, match="at most 512"):
        await radio().write("24:0A:C4:3F:2A:01", SERVICE, CHAR, b"x" * 513)
    assert FakeClient.made == []


async def test_bridge_on_the_bleak_adapter_speaks_the_protocol() -> None:
    emitted: list[dict[str, Any]] = []
    bridge = Bridge(radio(), emitted.append, "bleak")
    reader = asyncio.StreamReader()
    serving = asyncio.create_task(bridge.serve(reader))
    reader.feed_data(orjson.dumps({"event": "start_scan", "service_uuid": SERVICE}) + b"\n")
    await wait_for(lambda: {"event": "scan_started", "service_uuid": SERVICE} in emitted, message="scan")
    FakeScanner.instances[-1].callback(BLEDevice("AA:BB", None, details=None), advertisement([SERVICE]))
    FakeClient.write_error = BleakError("Not connected")
    write = {"address": "AA:BB", "service_uuid": SERVICE, "characteristic_uuid": CHAR, "payload": {"a": 1}}
    reader.feed_data(orjson.dumps({"event": "connect_and_write", "id": "w_1", **write}) + b"\n")
    reader.feed_data(b'{"event":"stop_scan"}\n')

    def named(name: str) -> list[dict[str, Any]]:
        return [e for e in emitted if e["event"] == name]

    # End of stdin cancels writes still running, so it comes only once both answers are out.
    await wait_for(lambda: named("write_result") and named("scan_stopped"), message="write and stop answered")
    reader.feed_eof()
    await asyncio.wait_for(serving, 5)
    names = [e["event"] for e in emitted]
    assert names[:3] == ["ready", "scan_started", "discovered"]
    assert named("write_result") == [
        {
            "event": "write_result",
            "id": "w_1",
            "address": "AA:BB",
            "ok": False,
            "error": "BleakError: Not connected",
        }
    ]
    assert FakeScanner.instances[-1].stopped
