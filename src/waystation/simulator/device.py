"""One simulated device speaking the device protocol (PROTOCOLS §2) over its own MQTT connection.

It handshakes, heartbeats, publishes plausible state for its type, sets a will (LWT) that reports it
offline, answers commands with `accepted` then `applied` and shows the change in its next state.
`ota_update` is a real firmware update (docs/ota.md): download over HTTP, SHA-256 check, `ota` progress
events, `applied`, a reboot (reconnect) and a handshake with the new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import httpx
import orjson

from waystation.config import MqttEndpoint

log = logging.getLogger(__name__)

FIRMWARE_VERSION = "1.4.2"


@dataclass
class SimConfig:
    endpoint: MqttEndpoint
    station_id: str
    state_interval: float = 10.0
    heartbeat_interval: float = 30.0
    username: str | None = None
    password: str | None = None
    # Pause between the steps of a firmware update, so progress is visible the way a real one's is.
    ota_step_delay: float = 0.5


class _Reboot(Exception):
    """Raised inside a session after a firmware update: leave the connection and come back as new."""


class DownloadFailed(Exception):
    pass


@dataclass(frozen=True)
class DeviceLogin:
    """A device's own broker account (`mqtt` of `POST /api/v1/devices`), for brokers that enforce them."""

    username: str
    password: str = field(repr=False)
    client_id: str


@dataclass
class SimulatedDevice:
    device_id: str
    type: str
    config: SimConfig
    rng: random.Random = field(default_factory=random.Random)
    state: dict[str, Any] = field(default_factory=dict)
    commands_applied: int = 0
    published: int = 0
    connected: bool = False
    login: DeviceLogin | None = None  # when set, connect as this account instead of SimConfig's
    firmware_version: str = FIRMWARE_VERSION
    ota_updates: int = 0  # firmware updates applied
    _client: aiomqtt.Client | None = None
    _state_now: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.state = initial_state(self.type, self.rng)

    def topic(self, suffix: str) -> str:
        return f"station/{self.config.station_id}/device/{self.device_id}/{suffix}"

    async def run(self) -> None:
        """Stay connected forever, reconnecting with backoff."""
        delay = 1.0
        # Spread the fleet's connects and publishes over time instead of one thundering herd.
        await asyncio.sleep(self.rng.uniform(0, min(self.config.state_interval, 2.0)))
        while True:
            try:
                await self._session()
                delay = 1.0
            except aiomqtt.MqttError as exc:
                self.connected = False
                log.debug("%s: connection lost (%s); retrying in %.1fs", self.device_id, exc, delay)
                await asyncio.sleep(delay * self.rng.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)

    async def _session(self) -> None:
        cfg = self.config
        will = aiomqtt.Will(self.topic("heartbeat"), orjson.dumps({"status": "offline"}), qos=1)
        login = self.login
        async with aiomqtt.Client(
            cfg.endpoint.host,
            cfg.endpoint.port,
            # A device account is bound to its client id on brokers that enforce accounts.
            identifier=login.client_id if login else f"sim-{self.device_id}",
            will=will,
            keepalive=60,
            username=login.username if login else cfg.username or cfg.endpoint.username,
            password=login.password if login else cfg.password or cfg.endpoint.password,
        ) as client:
            self._client = client
            self.connected = True
            await client.subscribe(self.topic("command"), qos=1)
            await client.subscribe(self.topic("handshake/ack"), qos=1)
            await self._publish(
                "handshake",
                {"type": self.type, "firmwareVersion": self.firmware_version, "chip": "esp32-sim"},
            )
            await self._publish("heartbeat", {"status": "online"})
            await self._publish_state()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._heartbeats())
                    tasks.create_task(self._states())
                    tasks.create_task(self._listen(client))
            except* _Reboot:
                # A clean disconnect (no will: a reboot is no outage); run() reconnects at once.
                log.info("%s: rebooting into firmware %s", self.device_id, self.firmware_version)

    async def _publish(self, suffix: str, payload: dict[str, Any]) -> None:
        assert self._client is not None
        await self._client.publish(self.topic(suffix), orjson.dumps(payload), qos=1)
        self.published += 1

    async def _publish_state(self) -> None:
        await self._publish("state", {"state": dict(self.state)})

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval * self.rng.uniform(0.95, 1.05))
            await self._publish("heartbeat", {"status": "online"})

    async def _states(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._state_now.wait(), self.config.state_interval * self.rng.uniform(0.9, 1.1)
                )
            self._state_now.clear()
            event = step_state(self.type, self.state, self.rng)
            await self._publish_state()
            if event is not None:
                await self._publish("event", {"event": "device_event", "data": event})

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.matches(self.topic("command")):
                await self._on_command(message.payload)

    async def _on_command(self, raw: Any) -> None:
        try:
            command = orjson.loads(raw)
            request_id = str(command["request_id"])
            action = str(command["action"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if action == "ota_update":
            await self._update_firmware(request_id, command)
            return
        await self._publish("command/ack", {"request_id": request_id, "status": "accepted"})
        error = apply_command(self.type, self.state, action, command)
        if error:
            await self._publish("command/ack", {"request_id": request_id, "status": "failed", "error": error})
            return
        self.commands_applied += 1
        await self._publish("command/ack", {"request_id": request_id, "status": "applied"})
        self._state_now.set()

    # --- firmware updates ------------------------------------------------------------------------

    async def _update_firmware(self, request_id: str, command: dict[str, Any]) -> None:
        """What real firmware does with `ota_update`: fetch, verify, install, reboot, announce."""
        url, sha256, version = command.get("url"), command.get("sha256"), command.get("version")
        if not (isinstance(url, str) and isinstance(sha256, str) and isinstance(version, str)):
            await self._publish(
                "command/ack", {"request_id": request_id, "status": "failed", "error": "bad ota_update"}
            )
            return
        await self._publish("command/ack", {"request_id": request_id, "status": "accepted"})
        try:
            digest = await self._download(url)
        except (httpx.HTTPError, DownloadFailed) as exc:
            await self._ota_failed(request_id, f"download failed: {exc}")
            return
        if digest != sha256.lower():
            await self._ota_failed(request_id, f"checksum mismatch: expected {sha256.lower()}, got {digest}")
            return
        await self._publish("event", {"event": "ota", "data": {"state": "applying"}})
        await asyncio.sleep(self.config.ota_step_delay)  # writing the flash
        self.firmware_version = version
        self.ota_updates += 1
        await self._publish("command/ack", {"request_id": request_id, "status": "applied"})
        await asyncio.sleep(self.config.ota_step_delay)
        raise _Reboot

    async def _download(self, url: str) -> str:
        """Stream the image, hashing it and reporting progress in quarters; returns the hex SHA-256."""
        if not url.startswith(("http://", "https://")):
            raise DownloadFailed(f"unsupported URL {url[:80]!r}")
        digest = hashlib.sha256()
        await self._ota_progress(0)
        async with (
            httpx.AsyncClient(timeout=30.0) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise DownloadFailed(f"HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0)
            received, reported = 0, 0
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                received += len(chunk)
                quarter = min(100, received * 100 // total) // 25 * 25 if total else 0
                if quarter > reported and quarter < 100:
                    reported = quarter
                    await self._ota_progress(quarter)
        await self._ota_progress(100)
        return digest.hexdigest()

    async def _ota_progress(self, progress: int) -> None:
        await self._publish("event", {"event": "ota", "data": {"state": "downloading", "progress": progress}})
        await asyncio.sleep(self.config.ota_step_delay)

    async def _ota_failed(self, request_id: str, error: str) -> None:
        await self._publish("event", {"event": "ota", "data": {"state": "failed", "error": error}})
        await self._publish("command/ack", {"request_id": request_id, "status": "failed", "error": error})


# --- behaviour per type (pure functions, easy to test) ------------------------------------------------


def initial_state(type_id: str, rng: random.Random) -> dict[str, Any]:
    if type_id == "climate":
        return {"temperature": round(rng.uniform(19, 24), 2), "humidity": round(rng.uniform(35, 55), 1)}
    if type_id == "pir":
        return {"motion": False, "sensitivity": 5}
    if type_id == "switch-pir":
        return {"motion": False, "switch": False, "sensitivity": 5}
    if type_id == "light":
        return {"on": False, "brightness": 50}
    return {"value": round(rng.uniform(0, 100), 2), "interval_s": 10}


def step_state(type_id: str, state: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """Advance the simulated physics one step; return a device event to publish, if any."""
    if type_id == "climate":
        hour = time.time() / 3600.0
        target = 21.5 + 2.0 * math.sin(hour * 2 * math.pi / 24)
        state["temperature"] = round(
            state["temperature"] + 0.2 * (target - state["temperature"]) + rng.gauss(0, 0.15), 2
        )
        state["humidity"] = round(min(95.0, max(10.0, state["humidity"] + rng.gauss(0, 0.5))), 1)
        return None
    if type_id in ("pir", "switch-pir"):
        motion = rng.random() < 0.1 * state.get("sensitivity", 5) / 5
        changed = motion != state.get("motion")
        state["motion"] = motion
        return {"action": "motion_detected"} if motion and changed else None
    if type_id == "light":
        return None
    state["value"] = round(state.get("value", 50.0) + rng.gauss(0, 1.0), 2)
    return None


def apply_command(type_id: str, state: dict[str, Any], action: str, params: dict[str, Any]) -> str | None:
    """Change the state as the real firmware would; an error text when the device cannot."""
    if action in ("reboot", "factory_reset"):
        return None
    if action == "ota_update":
        return "ota_update needs the network: SimulatedDevice handles it, not this state function"
    if action == "set_brightness" and type_id == "light":
        state["brightness"] = int(params["brightness"])
        state["on"] = state["brightness"] > 0
        return None
    if action == "set_power" and type_id == "light":
        state["on"] = bool(params["on"])
        return None
    if action == "set_switch" and type_id == "switch-pir":
        state["switch"] = bool(params["on"])
        return None
    if action == "set_sensitivity" and type_id in ("pir", "switch-pir"):
        state["sensitivity"] = int(params["level"])
        return None
    if action == "set_interval":
        state["interval_s"] = int(params["interval_s"])
        return None
    return f"unsupported command {action!r}"
