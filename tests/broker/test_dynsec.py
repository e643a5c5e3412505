"""Broker accounts on a real Mosquitto with dynamic security: least privilege per device, refused logins,
access removed on delete and disable, an outbox that survives a broker outage, and reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from tests.broker.dynsec_broker import ADMIN, DynsecMosquitto, dynsec_mosquitto
from tests.helpers import StationHandle, start_station, wait_for
from waystation.broker.acl import STATION_USERNAME
from waystation.bus import TypeFilter
from waystation.config import Settings

STATION_PASSWORD = "station-test-password-1"


def device_acls(station_id: str, device_id: str) -> list[tuple[str, str, bool]]:
    """What a device's role must hold, written out (not derived from the code under test)."""
    root = f"station/{station_id}/device/{device_id}"
    sends = [
        ("publishClientSend", f"{root}/{leaf}", True) for leaf in ("handshake", "state", "event", "heartbeat")
    ]
    sends.append(("publishClientSend", f"{root}/command/ack", True))
    reads = [
        (kind, f"{root}/{leaf}", True)
        for leaf in ("command", "handshake/ack")
        for kind in ("publishClientReceive", "subscribeLiteral", "unsubscribeLiteral")
    ]
    return sorted(sends + reads)


@pytest.fixture
async def dynsec(tmp_path: Path) -> AsyncIterator[DynsecMosquitto]:
    async with dynsec_mosquitto(tmp_path / "dynsec") as broker:
        yield broker


@pytest.fixture
def secured_settings(settings_factory: Callable[..., Settings], dynsec: DynsecMosquitto) -> Settings:
    return settings_factory(
        mqtt_url=f"mqtt://{STATION_USERNAME}:{STATION_PASSWORD}@127.0.0.1:{dynsec.port}",
        broker_admin="mosquitto-dynsec",
        broker_admin_username=ADMIN,
        broker_admin_password=dynsec.admin_password,
        broker_sync_poll_seconds=0.2,
        broker_sync_backoff_base_seconds=0.1,
        broker_sync_backoff_max_seconds=0.5,
        broker_protected_usernames=["meter-1"],
    )


@pytest.fixture
async def secured(secured_settings: Settings) -> AsyncIterator[StationHandle]:
    async with start_station(secured_settings) as handle:
        yield handle


class Device:
    """A device that logs in with the `mqtt` block the station returned for it."""

    def __init__(self, station: StationHandle, device_id: str, mqtt: dict[str, Any]) -> None:
        self.root = f"station/{station.station_id}/device/{device_id}"
        self.mqtt = mqtt
        self.port = station.mqtt_port
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lost = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Device:
        self.client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.mqtt["client_id"],
            protocol=aiomqtt.ProtocolVersion.V5,
            username=self.mqtt["username"],
            password=self.mqtt["password"],
            keepalive=5,
        )
        await self.client.__aenter__()
        granted = await self.client.subscribe(f"{self.root}/command", qos=1)
        assert not _refused(granted)
        self._listener = asyncio.create_task(self._listen(self.client))
        return self

    async def _listen(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self.received.append((str(message.topic), orjson.loads(message.payload)))  # type: ignore[arg-type]
        except aiomqtt.MqttError:
            self.lost.set()

    async def __aexit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.__aexit__(None, None, None)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        assert self.client is not None
        await self.client.publish(topic, orjson.dumps(payload), qos=1)


def _refused(granted: Any) -> bool:
    codes = granted if isinstance(granted, list | tuple) else [granted]
    return any(getattr(code, "value", code) >= 0x80 for code in codes)


async def can_connect(port: int, *, username: str | None, password: str | None, client_id: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            username=username,
            password=password,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=5,
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def synced(station: StationHandle) -> bool:
    assert station.ctx.broker_sync is not None
    status = await station.ctx.broker_sync.status()
    return status["backlog"] == 0 and status["broker_reachable"] is True


async def create(station: StationHandle, device_id: str) -> dict[str, Any]:
    body = await station.create_device(device_id, "climate")
    await wait_for(lambda: synced(station), message="broker sync caught up")
    return dict(body["mqtt"])


async def test_device_publishes_its_state_and_receives_its_commands(secured: StationHandle) -> None:
    mqtt = await create(secured, "dA")
    assert mqtt["username"] == "dev-dA" and mqtt["client_id"] == "dA" and mqtt["port"] == secured.mqtt_port
    async with Device(secured, "dA", mqtt) as dev:
        await dev.publish(f"{dev.root}/state", {"state": {"temperature": 21.5}})

        async def recorded() -> bool:
            return (await secured.device("dA"))["state"] == {"temperature": 21.5}

        await wait_for(recorded, message="state recorded")
        r = await secured.client.post(
            "/api/v1/devices/dA/commands", headers=await secured.owner_headers(), json={"action": "reboot"}
        )
        assert r.status_code == 202, r.text
        await wait_for(lambda: dev.received, message="command delivered")
        topic, payload = dev.received[0]
        assert topic == f"{dev.root}/command" and payload["action"] == "reboot"


async def test_a_device_cannot_reach_another_devices_topics(secured: StationHandle) -> None:
    mqtt_a = await create(secured, "dA")
    mqtt_b = await create(secured, "dB")
    b_root = f"station/{secured.station_id}/device/dB"
    async with Device(secured, "dA", mqtt_a) as a, Device(secured, "dB", mqtt_b) as b:
        # Subscribing to B's commands is refused, and B's command never reaches A.
        assert a.client is not None
        assert _refused(await a.client.subscribe(f"{b_root}/command", qos=1))
        assert _refused(await a.client.subscribe("station/#", qos=1))
        # Publishing as B is dropped by the broker: the station never records it.
        await a.publish(f"{b_root}/state", {"state": {"temperature": 99.0}})
        await a.publish(f"{a.root}/state", {"state": {"temperature": 20.0}})

        async def a_recorded() -> bool:
            return (await secured.device("dA"))["state"] == {"temperature": 20.0}

        await wait_for(a_recorded, message="A's own state")
        await b.publish(f"{b.root}/state", {"state": {"humidity": 50}})

        async def b_recorded() -> bool:
            return (await secured.device("dB"))["state"] == {"humidity": 50}

        await wait_for(b_recorded, message="B's own state")
        r = await secured.client.post(
            "/api/v1/devices/dB/commands", headers=await secured.owner_headers(), json={"action": "reboot"}
        )
        assert r.status_code == 202, r.text
        await wait_for(lambda: b.received, message="B's command")
        await asyncio.sleep(0.3)
        assert a.received == []
    assert (await secured.device("dB"))["state"] == {"humidity": 50}


async def test_anonymous_wrong_password_and_wrong_client_id_are_refused(secured: StationHandle) -> None:
    mqtt = await create(secured, "dA")
    port = secured.mqtt_port
    assert await can_connect(port, username=mqtt["username"], password=mqtt["password"], client_id="dA")
    assert not await can_connect(port, username=None, password=None, client_id="anon")
    assert not await can_connect(port, username=mqtt["username"], password="wrong", client_id="dA")
    assert not await can_connect(
        port, username=mqtt["username"], password=mqtt["password"], client_id="other"
    )


async def test_deleted_device_is_disconnected_and_cannot_reconnect(secured: StationHandle) -> None:
    mqtt = await create(secured, "dA")
    async with Device(secured, "dA", mqtt) as dev:
        r = await secured.client.delete("/api/v1/devices/dA", headers=await secured.owner_headers())
        assert r.status_code == 204
        await asyncio.wait_for(dev.lost.wait(), 10)
    assert not await can_connect(
        secured.mqtt_port, username=mqtt["username"], password=mqtt["password"], client_id="dA"
    )


async def test_disabled_device_is_cut_off_until_enabled_again(secured: StationHandle) -> None:
    mqtt = await create(secured, "dA")
    headers = await secured.owner_headers()
    login = {"username": mqtt["username"], "password": mqtt["password"], "client_id": "dA"}
    async with Device(secured, "dA", mqtt) as dev:
        r = await secured.client.patch("/api/v1/devices/dA", headers=headers, json={"enabled": False})
        assert r.status_code == 200, r.text
        await asyncio.wait_for(dev.lost.wait(), 10)
    assert not await can_connect(secured.mqtt_port, **login)
    r = await secured.client.patch("/api/v1/devices/dA", headers=headers, json={"enabled": True})
    assert r.status_code == 200, r.text
    await wait_for(lambda: can_connect(secured.mqtt_port, **login), message="access restored")


async def test_outbox_queues_while_the_broker_is_down_then_converges(
    secured: StationHandle, dynsec: DynsecMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="waystation")
    headers = await secured.owner_headers()
    await create(secured, "dA")
    old_b = await create(secured, "dB")
    changes = secured.ctx.bus.subscribe(TypeFilter(["broker.sync_changed"]))
    dynsec.stop()
    # API writes succeed while the broker is away.
    mqtt_c = (await secured.create_device("dC", "climate"))["mqtt"]
    await secured.create_device("dD", "climate")
    assert (await secured.client.delete("/api/v1/devices/dA", headers=headers)).status_code == 204
    r = await secured.client.post("/api/v1/devices/dB/mqtt-credentials", headers=headers)
    assert r.status_code == 200, r.text
    new_b = r.json()
    assert new_b["username"] == "dev-dB" and new_b["password"] != old_b["password"]

    async def backlog_reported() -> dict[str, Any]:
        r = await secured.client.get("/api/v1/broker/sync", headers=headers)
        body = r.json()
        return body if body["backlog"] >= 4 and body["last_error"] and body["items"] else {}

    status = await wait_for(backlog_reported, message="backlog with an error")
    assert status["mode"] == "mosquitto-dynsec" and status["oldest_pending_at"] is not None
    assert {i["op"] for i in status["items"]} >= {"upsert_client", "delete_client"}
    for secret in (new_b["password"], mqtt_c["password"]):
        assert secret not in str(status) and secret not in caplog.text

    dynsec.start()
    sid = secured.station_id

    async def converged() -> bool:
        accounts = await dynsec.accounts()
        devices = {name: a for name, a in accounts.items() if name.startswith("dev-")}
        if set(devices) != {"dev-dB", "dev-dC", "dev-dD"}:
            return False
        return all(
            a["roles"] == [name] and a["clientid"] == name[4:] and a["acls"] == device_acls(sid, name[4:])
            for name, a in devices.items()
        ) and await synced(secured)

    await wait_for(converged, timeout=20, message="broker state equals the database")
    accounts = await dynsec.accounts()
    assert set(accounts) == {ADMIN, STATION_USERNAME, "dev-dB", "dev-dC", "dev-dD"}
    port = secured.mqtt_port
    assert await can_connect(port, username="dev-dB", password=new_b["password"], client_id="dB")
    assert not await can_connect(port, username="dev-dB", password=old_b["password"], client_id="dB")
    assert await can_connect(port, username="dev-dC", password=mqtt_c["password"], client_id="dC")
    # The station's own link came back too.
    await wait_for(lambda: secured.ctx.mqtt is not None and secured.ctx.mqtt.connected, message="link back")
    # Subscribers (SSE, webhooks) heard the broker go away and come back.
    seen = []
    while (item := changes.get_nowait()) is not None:
        seen.append(item.data["broker_ok"])  # type: ignore[union-attr]
    assert False in seen and seen[-1] is True, seen


async def test_reconcile_removes_accounts_the_database_does_not_know(
    secured: StationHandle, dynsec: DynsecMosquitto
) -> None:
    headers = await secured.owner_headers()
    await create(secured, "dA")
    created = await dynsec.control(
        {"command": "createClient", "username": "intruder", "password": "x"},
        {"command": "createClient", "username": "meter-1", "password": "m"},
        {"command": "createRole", "rolename": "dev-ghost"},
    )
    assert all("error" not in c for c in created)
    r = await secured.client.post("/api/v1/broker/sync/reconcile", headers=headers)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "queued", "mode": "mosquitto-dynsec"}

    async def cleaned() -> bool:
        return set(await dynsec.accounts()) == {ADMIN, STATION_USERNAME, "dev-dA", "meter-1"}

    await wait_for(cleaned, message="unknown client removed")
    (roles,) = await dynsec.control({"command": "listRoles", "count": -1})
    assert "dev-ghost" not in roles["data"]["roles"]

    async def reported() -> dict[str, Any]:
        body = (await secured.client.get("/api/v1/broker/sync", headers=headers)).json()
        return body if body["last_reconcile"] and body["last_reconcile"]["removed"] >= 2 else {}

    status = await wait_for(reported, message="reconcile result")
    assert status["last_reconcile_at"] is not None and status["backlog"] == 0
    audit = (
        await secured.client.get("/api/v1/audit", headers=headers, params={"action": "broker.reconcile"})
    ).json()
    assert len(audit["items"]) == 1
    # Whatever no role grants is denied (`dynsec init` leaves receiving and unsubscribing open).
    (access,) = await dynsec.control({"command": "getDefaultACLAccess"})
    assert all(a["allow"] is False for a in access["data"]["acls"])


async def test_enabled_flows_on_the_station_broker_extend_the_station_account(
    secured: StationHandle, dynsec: DynsecMosquitto
) -> None:
    headers = await secured.owner_headers()
    flow = {
        "code": "meter",
        "topic": "thirdparty/+/reading",
        "action": "STORE_DB",
        "payload_schema": {"v": "number"},
    }
    r = await secured.client.post("/api/v1/flows", headers=headers, json=flow)
    assert r.status_code == 201, r.text

    async def station_reads_flow() -> bool:
        acls = (await dynsec.accounts())[STATION_USERNAME]["acls"]
        return ("publishClientReceive", "thirdparty/+/reading", True) in acls

    await wait_for(station_reads_flow, message="flow topic in the station's ACL")
    # A third-party publisher the operator created (and protected from reconcile) feeds the flow.
    await dynsec.control(
        {
            "command": "createRole",
            "rolename": "meters",
            "acls": [{"acltype": "publishClientSend", "topic": "thirdparty/#", "allow": True}],
        },
        {
            "command": "createClient",
            "username": "meter-1",
            "password": "m",
            "roles": [{"rolename": "meters"}],
        },
    )
    async with aiomqtt.Client("127.0.0.1", dynsec.port, username="meter-1", password="m") as meter:
        await meter.publish("thirdparty/m1/reading", orjson.dumps({"v": 1.5}), qos=1)

    async def stored() -> list[Any]:
        r = await secured.client.get("/api/v1/flows/meter/records", headers=headers)
        return list(r.json()["items"])

    await wait_for(stored, message="flow record")
    r = await secured.client.delete("/api/v1/flows/meter", headers=headers)
    assert r.status_code == 204

    async def dropped() -> bool:
        acls = (await dynsec.accounts())[STATION_USERNAME]["acls"]
        return not any(topic == "thirdparty/+/reading" for _, topic, _ in acls)

    await wait_for(dropped, message="flow topic removed from the station's ACL")


async def test_sync_status_and_reconcile_without_broker_admin(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.create_device("plain-1", "climate")
    r = await station.client.get("/api/v1/broker/sync", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "none"

    async def settled() -> bool:
        body = (await station.client.get("/api/v1/broker/sync", headers=headers)).json()
        return body["backlog"] == 0

    await wait_for(settled, message="rows settled without a broker admin")
    r = await station.client.post("/api/v1/broker/sync/reconcile", headers=headers)
    assert r.status_code == 503 and r.json()["code"] == "BROKER_SYNC_UNAVAILABLE"
    viewer = await station.user_headers("vera", "viewer")
    assert (await station.client.get("/api/v1/broker/sync", headers=viewer)).status_code == 403
    r = await station.client.post("/api/v1/devices/plain-1/mqtt-credentials", headers=viewer)
    assert r.status_code == 403
