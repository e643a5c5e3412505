"""The radio boundary: what the bridge needs from Bluetooth, and its real implementation on bleak.

`BleakRadio` takes the scanner and client factories as arguments, so tests replace only the radio
(`BleakScanner`, `BleakClient`) and run everything above it for real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from waystation.provisioning.ble.messages import Advertisement

log = logging.getLogger(__name__)

OnFound = Callable[[Advertisement], None]

# The largest value one GATT attribute holds (Bluetooth Core spec); firmware receives it as a long write.
MAX_WRITE_BYTES = 512


class RadioError(Exception):
    """A scan or write that failed; the message is reported to the station as is (never a secret)."""


class Radio(Protocol):
    async def start_scan(self, service_uuid: str, on_found: OnFound) -> None: ...

    async def stop_scan(self) -> None: ...

    async def write(self, address: str, service_uuid: str, characteristic_uuid: str, data: bytes) -> None: ...

    async def close(self) -> None: ...


def matches_service(service_uuids: list[str], wanted: str) -> bool:
    wanted = wanted.lower()
    return any(u.lower() == wanted for u in service_uuids)


class BleakRadio:
    """Scans with `BleakScanner` (a detection callback, filtered by service UUID) and writes with
    `BleakClient.write_gatt_char` (with response, so the firmware's acceptance is what `ok` means)."""

    def __init__(
        self,
        scanner_factory: Callable[..., Any] | None = None,
        client_factory: Callable[..., Any] | None = None,
        connect_timeout: float = 20.0,
    ) -> None:
        if scanner_factory is None or client_factory is None:
            from bleak import BleakClient, BleakScanner  # imported late: only real mode needs it

            scanner_factory = scanner_factory or BleakScanner
            client_factory = client_factory or BleakClient
        self._scanner_factory = scanner_factory
        self._client_factory = client_factory
        self._connect_timeout = connect_timeout
        self._scanner: Any = None
        self._lock = asyncio.Lock()  # one connection at a time: adapters handle few, and slowly

    async def start_scan(self, service_uuid: str, on_found: OnFound) -> None:
        await self.stop_scan()

        def detected(device: Any, adv: Any) -> None:
            uuids = [str(u) for u in (adv.service_uuids or [])]
            # The UUID filter given to the scanner is advisory on some backends: check it here too.
            if not matches_service(uuids, service_uuid):
                return
            on_found(
                Advertisement(
                    address=str(device.address),
                    name=adv.local_name or device.name,
                    rssi=int(adv.rssi),
                    service_uuids=uuids,
                    service_data={str(k): bytes(v).hex() for k, v in (adv.service_data or {}).items()},
                )
            )

        scanner = self._scanner_factory(detection_callback=detected, service_uuids=[service_uuid])
        try:
            await scanner.start()
        except Exception as exc:  # BleakError, D-Bus errors, no adapter: all are "cannot scan"
            raise RadioError(f"cannot start scanning: {exc}") from exc
        self._scanner = scanner

    async def stop_scan(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            await scanner.stop()
        except Exception as exc:
            log.warning("stopping the scan failed: %s", exc)

    async def write(self, address: str, service_uuid: str, characteristic_uuid: str, data: bytes) -> None:
        if len(data) > MAX_WRITE_BYTES:
            raise RadioError(f"payload is {len(data)} bytes; a GATT value holds at most {MAX_WRITE_BYTES}")
        async with self._lock:
            try:
                client = self._client_factory(address, timeout=self._connect_timeout)
                async with client:
                    service = client.services.get_service(service_uuid) if client.services else None
                    if service is None:
                        raise RadioError(f"the device has no provisioning service {service_uuid}")
                    if service.get_characteristic(characteristic_uuid) is None:
                        raise RadioError(f"the device has no characteristic {characteristic_uuid}")
                    await client.write_gatt_char(characteristic_uuid, data, response=True)
            except RadioError:
                raise
            except TimeoutError as exc:
                raise RadioError(f"connecting to {address} timed out") from exc
            except Exception as exc:  # BleakError and OS errors carry a useful text, never our payload
                raise RadioError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self.stop_scan()
