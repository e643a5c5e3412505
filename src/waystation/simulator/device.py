"""One simulated device speaking the device protocol (PROTOCOLS §2) over its own MQTT connection.

It handshakes, heartbeats, publishes plausible state for its type, sets a will (LWT) that reports it
offline, answers commands with `accepted` then `applied` and shows the change in its next state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
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
        async with aiomqtt.Client(
            cfg.endpoint.host,
            cfg.endpoint.port,
            identifier=f"sim-{self.device_id}",
            will=will,
            keepalive=60,
            username=cfg.username or cfg.endpoint.username,
            password=cfg.password or cfg.endpoint.password,
        ) as client:
            self._client = client
            self.connected = True
            await client.subscribe(self.topic("command"), qos=1)
            await client.subscribe(self.topic("handshake/ack"), qos=1)
            await self._publish(
                "handshake", {"type": self.type, "firmwareVersion": FIRMWARE_VERSION, "chip": "esp32-sim"}
            )
            await self._publish("heartbeat", {"status": "online"})
            await self._publish_state()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._heartbeats())
                tasks.create_task(self._states())
                tasks.create_task(self._listen(client))

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
        await self._publish("command/ack", {"request_id": request_id, "status": "accepted"})
        error = apply_command(self.type, self.state, action, command)
        if error:
            await self._publish("command/ack", {"request_id": request_id, "status": "failed", "error": error})
            return
        self.commands_applied += 1
        await self._publish("command/ack", {"request_id": request_id, "status": "applied"})
        self._state_now.set()


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
        return "OTA is not simulated by this firmware"
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
