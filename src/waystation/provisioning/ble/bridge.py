"""`waystation ble-bridge`: the transport-only BLE bridge (PROTOCOLS §8).

It reads commands from stdin and writes events to stdout, one JSON object per line; logs go to stderr.
A bad line gets an `error` event and the bridge carries on. End of stdin (the station went away) stops
the scan and exits. It never logs or echoes what it writes: the payload holds credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from waystation.provisioning.ble import messages
from waystation.provisioning.ble.messages import Advertisement, BadMessage
from waystation.provisioning.ble.radio import Radio, RadioError

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


class Bridge:
    def __init__(self, radio: Radio, emit: Emit, mode: str) -> None:
        self.radio = radio
        self.emit = emit
        self.mode = mode
        self._writes: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        self.emit({"event": "ready", "mode": self.mode})
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the reader's limit: drop it, keep going
                    self.emit({"event": "error", "error": "line too long"})
                    continue
                if not line:
                    return  # stdin closed: the station is gone
                if line.strip():
                    await self.handle_line(line)
        finally:
            for task in self._writes:
                task.cancel()
            await self.radio.close()

    async def handle_line(self, line: bytes) -> None:
        try:
            message = messages.decode(line)
            await self.handle(message)
        except BadMessage as exc:
            self.emit({"event": "error", "error": str(exc)})
        except Exception as exc:  # nothing a line does may end the bridge
            log.exception("handling a command failed")
            self.emit({"event": "error", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})

    async def handle(self, message: dict[str, Any]) -> None:
        name = message["event"]
        if name == "start_scan":
            service_uuid = messages.text_field(message, "service_uuid")
            try:
                await self.radio.start_scan(service_uuid, self._found)
            except RadioError as exc:
                log.error("scan failed to start: %s", exc)
                self.emit({"event": "error", "error": str(exc), "command": "start_scan"})
                return
            self.emit({"event": "scan_started", "service_uuid": service_uuid})
        elif name == "stop_scan":
            await self.radio.stop_scan()
            self.emit({"event": "scan_stopped"})
        elif name == "connect_and_write":
            address = messages.text_field(message, "address")
            service_uuid = messages.text_field(message, "service_uuid")
            characteristic_uuid = messages.text_field(message, "characteristic_uuid")
            data = messages.payload_bytes(message)
            echo = messages.write_echo(message)
            # Writes run beside the command loop: a slow connection must not hold up stop_scan.
            task = asyncio.create_task(self._write(address, service_uuid, characteristic_uuid, data, echo))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        else:
            raise BadMessage(f"unknown command {name[:40]!r}; expected one of {', '.join(messages.COMMANDS)}")

    def _found(self, adv: Advertisement) -> None:
        self.emit(adv.event())

    async def _write(
        self, address: str, service_uuid: str, characteristic_uuid: str, data: bytes, echo: dict[str, Any]
    ) -> None:
        log.info("writing %d bytes to %s", len(data), address)
        result: dict[str, Any] = {"event": "write_result", **echo, "address": address}
        try:
            await self.radio.write(address, service_uuid, characteristic_uuid, data)
        except RadioError as exc:
            log.warning("write to %s failed: %s", address, exc)
            self.emit({**result, "ok": False, "error": str(exc)})
            return
        except Exception as exc:  # a bug in a radio must still answer the station
            log.exception("write to %s crashed", address)
            self.emit({**result, "ok": False, "error": repr(exc)[:200]})
            return
        self.emit({**result, "ok": True})


def stdout_emitter() -> Emit:
    out = sys.stdout.buffer

    def emit(message: dict[str, Any]) -> None:
        out.write(messages.encode(message))
        out.flush()

    return emit


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=messages.MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run_bridge(radio: Radio, mode: str) -> None:
    bridge = Bridge(radio, stdout_emitter(), mode)
    await bridge.serve(await stdin_reader())


def main(simulate: bool = False, state_interval: float = 5.0, debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)
    radio: Radio
    if simulate:
        from waystation.provisioning.ble.simulated import SimulatedRadio

        radio = SimulatedRadio(state_interval=state_interval)
    else:
        from waystation.provisioning.ble.radio import BleakRadio

        radio = BleakRadio()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_bridge(radio, "simulate" if simulate else "bleak"))
