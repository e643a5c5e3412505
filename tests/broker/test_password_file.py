"""`password-file`: the managed broker without the dynamic security plugin (Mosquitto without it, and the
amqtt fallback) still refuses anonymous clients and holds each device to its own topics, through account
files the station writes and the broker reloads on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from tests.broker.test_dynsec import synced
from tests.helpers import StationHandle, free_port, start_station, wait_for
from waystation.broker.acl import STATION_USERNAME
from waystation.config import Settings

V311 = aiomqtt.ProtocolVersion.V311


def managed_settings(
    settings_factory: Callable[..., Settings], tmp_path: Path, kind: str, port: int
) -> Settings:
    return settings_factory(  # type: ignore[no-any-return]
        mqtt_url=f"embedded://127.0.0.1:{port}",
        embedded_broker=kind,
        # Mosquitto as if its package had no dynamic security plugin.
        broker_dynsec_plugin=str(tmp_path / "not-installed" / "mosquitto_dynamic_security.so"),
        broker_sync_poll_seconds=0.2,
    )


@pytest.fixture(params=["mosquitto", "amqtt"])
async def managed(
    request: pytest.FixtureRequest, settings_factory: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[StationHandle]:
    settings = managed_settings(settings_factory, tmp_path, request.param, free_port())
    async with start_station(settings) as station:
        await wait_for(
            lambda: station.ctx.mqtt is not None and station.ctx.mqtt.connected, message="station link"
        )
        yield station


async def can_connect(port: int, username: str | None, password: str | None, client_id: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            username=username,
            password=password,
            identifier=client_id,
            protocol=V311,
            timeout=5,
        ):
            return True
    except aiomqtt.MqttError:
        return False


class Dev:
    def __init__(
        self, station: StationHandle, device_id: str, mqtt: dict[str, Any], subscribe: str | None = None
    ) -> None:
        self.root = f"station/{station.station_id}/device/{device_id}"
        self.port = station.mqtt_port
        self.mqtt = mqtt
        self.subscribe = subscribe or f"{self.root}/command"
        self.received: list[str] = []
        self.lost = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dev:
        self.client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=self.mqtt["username"],
            password=self.mqtt["password"],
            identifier=self.mqtt["client_id"],
            protocol=V311,
            keepalive=5,
        )
        await self.client.__aenter__()
        with contextlib.suppress(aiomqtt.MqttError):  # a refused wildcard is fine: deliveries are checked
            await self.client.subscribe(self.subscribe, qos=1)
        self._task = asyncio.create_task(self._listen(self.client))
        return self

    async def _listen(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self.received.append(str(message.topic))
        except aiomqtt.MqttError:
            self.lost.set()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.__aexit__(None, None, None)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        assert self.client is not None
        await self.client.publish(topic, orjson.dumps(payload), qos=1)


async def create(station: StationHandle, device_id: str) -> dict[str, Any]:
    body = await station.create_device(device_id, "climate")
    await wait_for(lambda: synced(station), message="broker sync caught up")
    return dict(body["mqtt"])


async def test_accounts_and_least_privilege_without_dynsec(managed: StationHandle) -> None:
    station, port = managed, managed.mqtt_port
    sync = station.ctx.broker_sync
    assert sync is not None and sync.mode == "password-file" and sync.disconnects_clients
    broker = station.ctx.broker
    assert broker is not None
    kind = broker.kind
    data = station.settings.data_dir / "broker"
    accounts_file = data / "accounts.json"
    assert stat.S_IMODE(accounts_file.stat().st_mode) == 0o600
    station_key = (station.settings.data_dir / "keys" / "broker-station.key").read_text().strip()
    assert station_key not in accounts_file.read_text()
    if kind == "mosquitto":
        conf = (data / "mosquitto.conf").read_text()
        assert "allow_anonymous false" in conf and "password_file" in conf and "acl_file" in conf
        assert "allow_anonymous true" not in conf
        for name in ("passwords", "acl"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600

    assert not await can_connect(port, None, None, "anonymous")
    assert not await can_connect(port, STATION_USERNAME, "wrong", "x")
    a_mqtt = await create(station, "pf-a")
    b_mqtt = await create(station, "pf-b")
    assert await can_connect(port, a_mqtt["username"], a_mqtt["password"], "pf-a")
    assert not await can_connect(port, a_mqtt["username"], "wrong", "pf-a")
    # amqtt ties the account to its client id; Mosquitto's password file cannot (docs/broker.md).
    assert await can_connect(port, a_mqtt["username"], a_mqtt["password"], "elsewhere") == (
        kind == "mosquitto"
    )

    owner = await station.owner_headers()
    async with Dev(station, "pf-a", a_mqtt, "station/#") as a, Dev(station, "pf-b", b_mqtt) as b:
        # A publishing as B is dropped by the broker: the station never records it.
        await a.publish(f"{b.root}/state", {"state": {"temperature": 99.0}})
        await a.publish(f"{a.root}/state", {"state": {"temperature": 20.0}})

        async def a_recorded() -> bool:
            return (await station.device("pf-a"))["state"] == {"temperature": 20.0}

        await wait_for(a_recorded, message="A's own state recorded")
        assert (await station.device("pf-b"))["state"] in ({}, None)
        await b.publish(f"{b.root}/state", {"state": {"humidity": 50}})

        async def b_recorded() -> bool:
            return (await station.device("pf-b"))["state"] == {"humidity": 50}

        await wait_for(b_recorded, message="B's own state (B is online)")
        # B's command reaches B only, although A asked for `station/#`.
        r = await station.client.post(
            "/api/v1/devices/pf-b/commands", headers=owner, json={"action": "reboot"}
        )
        assert r.status_code == 202, r.text
        await wait_for(lambda: b.received, message="B's command")
        await asyncio.sleep(0.3)
        assert a.received == []

        # A new password drops the session opened with the old one; the old password is refused.
        r = await station.client.post("/api/v1/devices/pf-a/mqtt-credentials", headers=owner)
        assert r.status_code == 200, r.text
        rotated = r.json()
        await asyncio.wait_for(a.lost.wait(), 10)
        # Deleting B drops B.
        r = await station.client.delete("/api/v1/devices/pf-b", headers=owner)
        assert r.status_code == 204
        await asyncio.wait_for(b.lost.wait(), 10)
    assert not await can_connect(port, a_mqtt["username"], a_mqtt["password"], "pf-a")
    assert await can_connect(port, rotated["username"], rotated["password"], "pf-a")
    assert not await can_connect(port, b_mqtt["username"], b_mqtt["password"], "pf-b")


async def test_accounts_survive_a_restart_and_a_lost_file(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    async with start_station(managed_settings(settings_factory, tmp_path, "mosquitto", port)) as station:
        mqtt = await create(station, "pf-r")
    accounts = tmp_path / "data" / "broker" / "accounts.json"
    async with start_station(managed_settings(settings_factory, tmp_path, "mosquitto", port)) as station:
        sync = station.ctx.broker_sync
        assert sync is not None
        await wait_for(lambda: sync.last_reconcile is not None, message="start-up reconcile")
        assert sync.last_reconcile == {"created": 0, "updated": 0, "removed": 0}
        assert await can_connect(port, mqtt["username"], mqtt["password"], "pf-r")
    accounts.unlink()
    async with start_station(managed_settings(settings_factory, tmp_path, "mosquitto", port)) as station:
        await wait_for(
            lambda: can_connect(port, mqtt["username"], mqtt["password"], "pf-r"),
            message="the reconcile re-created the lost account",
        )
