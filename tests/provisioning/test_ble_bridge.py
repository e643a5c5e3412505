"""`waystation ble-bridge --simulate` as a child process: the stdio protocol of PROTOCOLS §8, bad input
that never kills it, and simulated devices that really join MQTT with the credentials written to them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import orjson
import pytest

from tests.helpers import Broker, wait_for
from waystation.provisioning.ble.simulated import CHARACTERISTIC_UUID, SERVICE_UUID

GOOD = "24:0A:C4:3F:2A:01"
WRITE_FAILS = "24:0A:C4:FA:11:04"
FOREIGN = "F0:13:C3:55:00:07"


class BridgeProcess:
    """The bridge child with its stdout parsed line by line (every line must be one JSON object)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.raw_lines: list[bytes] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.raw_lines.append(line)
            self.events.append(orjson.loads(line))

    async def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(message if isinstance(message, bytes) else orjson.dumps(message) + b"\n")
        await self.proc.stdin.drain()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    async def next(self, name: str, after: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[after:] if e["event"] == name), None)

        return await wait_for(found, timeout=timeout, message=f"bridge event {name}")


@contextlib.asynccontextmanager
async def bridge() -> AsyncIterator[BridgeProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "waystation", "ble-bridge", "--simulate", "--state-interval", "0.5"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    handle = BridgeProcess(proc)
    try:
        yield handle
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        handle._reader.cancel()


def write_command(address: str, payload: dict[str, Any] | str) -> dict[str, Any]:
    return {
        "event": "connect_and_write",
        "address": address,
        "service_uuid": SERVICE_UUID,
        "characteristic_uuid": CHARACTERISTIC_UUID,
        "payload": payload,
    }


async def test_bridge_scans_for_the_provisioning_service_only() -> None:
    async with bridge() as b:
        ready = await b.next("ready")
        assert ready == {"event": "ready", "mode": "simulate"}
        await b.send({"event": "start_scan", "service_uuid": SERVICE_UUID})
        await b.next("scan_started")

        async def several_rounds() -> bool:
            return len([e for e in b.named("discovered") if e["address"] == GOOD]) >= 3

        await wait_for(several_rounds, message="repeated advertisements")
        found = b.named("discovered")
        assert FOREIGN not in {e["address"] for e in found}  # another service: filtered out
        first = next(e for e in found if e["address"] == GOOD)
        assert first["name"] == "WS-ESP32-3F2A" and first["service_uuids"] == [SERVICE_UUID]
        assert bytes.fromhex(first["service_data"][SERVICE_UUID]) == b"\x01climate"
        rssis = {e["rssi"] for e in found if e["address"] == GOOD}
        assert all(-56 <= r <= -48 for r in rssis)

        mark = len(b.events)
        await b.send({"event": "stop_scan"})
        await b.next("scan_stopped", after=mark)
        stopped_at = len(b.events)
        await asyncio.sleep(1.2)  # two advertising rounds: nothing may follow a stopped scan
        assert not [e for e in b.events[stopped_at:] if e["event"] == "discovered"]
        # Every line on stdout is one JSON object naming its event.
        assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in b.raw_lines)


@pytest.mark.parametrize(
    ("line", "error_part"),
    [
        (b"this is not json\n", "not JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"no_event": true}\n', '"event"'),
        (b'{"event": "self_destruct"}\n', "unknown command"),
        (b'{"event": "start_scan"}\n', "service_uuid"),
        (orjson.dumps({**write_command(GOOD, {}), "payload": None}) + b"\n", "payload"),
    ],
)
async def test_bad_lines_get_an_error_event_and_the_bridge_carries_on(line: bytes, error_part: str) -> None:
    async with bridge() as b:
        await b.next("ready")
        await b.send(line)
        error = await b.next("error")
        assert error_part in error["error"]
        await b.send({"event": "start_scan", "service_uuid": SERVICE_UUID})
        await b.next("scan_started")
        assert b.proc.returncode is None


async def test_failed_writes_report_the_radio_error() -> None:
    async with bridge() as b:
        await b.next("ready")
        await b.send(write_command(WRITE_FAILS, {"ssid": "x"}))
        result = await b.next("write_result")
        assert result["address"] == WRITE_FAILS and result["ok"] is False
        assert "ATT error" in result["error"]
        mark = len(b.events)
        await b.send(write_command("00:00:00:00:00:00", {"ssid": "x"}))
        result = await b.next("write_result", after=mark)
        assert result["ok"] is False and "not found" in result["error"]
        mark = len(b.events)
        await b.send(write_command(GOOD, {"ssid": "only this"}))  # the firmware refuses a partial payload
        result = await b.next("write_result", after=mark)
        assert result["ok"] is False and "payload needs" in result["error"]


@pytest.mark.parametrize("wifi_password", ["wifi-secret-123", ""], ids=["wpa2", "open-network"])
async def test_written_device_joins_mqtt_with_the_written_settings(
    mosquitto: Broker, wifi_password: str
) -> None:
    station_id = "st-bridge"
    payload = {
        "ssid": "HomeNet",
        "password": wifi_password,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": mosquitto.port,
        "device_id": "ble-joined-1",
        "device_token": "wsd_test",
        "station_id": station_id,
        "mqtt_username": "dev-ble-joined-1",
        "mqtt_password": "wsm_test",
    }
    root = f"station/{station_id}/device/ble-joined-1"
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="bridge-test-watcher") as watcher:
        await watcher.subscribe(f"{root}/#", qos=1)
        async with bridge() as b:
            await b.next("ready")
            await b.send({**write_command(GOOD, payload), "id": "w_42"})
            result = await b.next("write_result")
            assert result == {"event": "write_result", "id": "w_42", "address": GOOD, "ok": True}
            seen: dict[str, dict[str, Any]] = {}

            async def collect() -> None:
                async for message in watcher.messages:
                    seen[str(message.topic).rsplit("/", 1)[1]] = orjson.loads(message.payload)  # type: ignore[arg-type]
                    if {"handshake", "state", "heartbeat"} <= seen.keys():
                        return

            await asyncio.wait_for(collect(), 15)
            assert seen["handshake"]["type"] == "climate"
            assert seen["heartbeat"] == {"status": "online"}
            assert "temperature" in seen["state"]["state"]
            # Once provisioned, the firmware stops advertising its provisioning service.
            await b.send({"event": "start_scan", "service_uuid": SERVICE_UUID})
            await b.next("scan_started")
            mark = len(b.events)
            await wait_for(lambda: len(b.named("discovered")) >= 8, message="advertisements")
            assert GOOD not in {e["address"] for e in b.events[mark:] if e["event"] == "discovered"}
            # The credentials never appear on stdout.
            assert not any(b"wifi-secret-123" in line or b"wsm_test" in line for line in b.raw_lines)


async def test_write_results_echo_the_id_only_when_one_was_given() -> None:
    async with bridge() as b:
        await b.next("ready")
        await b.send({**write_command(WRITE_FAILS, {"ssid": "x"}), "id": "w_7"})
        assert (await b.next("write_result"))["id"] == "w_7"
        mark = len(b.events)
        await b.send({**write_command(WRITE_FAILS, {"ssid": "x"}), "id": {"not": "a string"}})
        assert "id" not in await b.next("write_result", after=mark)
        mark = len(b.events)
        await b.send(write_command(WRITE_FAILS, {"ssid": "x"}))
        assert "id" not in await b.next("write_result", after=mark)


async def test_bridge_exits_when_the_station_closes_its_stdin() -> None:
    async with bridge() as b:
        await b.next("ready")
        await b.send({"event": "start_scan", "service_uuid": SERVICE_UUID})
        await b.next("scan_started")
        assert b.proc.stdin is not None
        b.proc.stdin.close()
        assert await asyncio.wait_for(b.proc.wait(), 10) == 0
