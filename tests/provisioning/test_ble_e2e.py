"""BLE provisioning end to end: a station whose managed Mosquitto enforces device accounts, the simulated
bridge as its child, a provisioning WebSocket client, and devices that really join with what was written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import websockets

from tests.broker.test_emqx_http import authn
from tests.helpers import Broker, StationHandle, free_port, start_station, wait_for
from waystation.config import Settings

AGENT_TOKEN = "agent-token-for-ble-tests-1"
WIFI_PASSWORD = "very-secret-wifi-passphrase"
GOOD = "24:0A:C4:3F:2A:01"
WRITE_FAILS = "24:0A:C4:FA:11:04"
GARBLES = "24:0A:C4:BA:D0:05"
NEVER_JOINS = "24:0A:C4:0F:F1:06"
AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}


@pytest.fixture
async def ble_station(settings_factory: Callable[..., Settings]) -> AsyncIterator[StationHandle]:
    settings = settings_factory(
        mqtt_url=f"embedded://127.0.0.1:{free_port()}",
        broker_sync_poll_seconds=0.2,
        agent_token=AGENT_TOKEN,
        ble_simulate=True,
        ble_restart_backoff_base_seconds=0.2,
        ble_restart_backoff_max_seconds=1.0,
        provisioning_join_timeout_seconds=6.0,
    )
    async with start_station(settings) as station:
        await wait_for(lambda: station.ctx.mqtt is not None and station.ctx.mqtt.connected, message="link")
        assert station.ctx.broker is not None and station.ctx.broker.kind == "mosquitto"
        assert station.ctx.broker_sync is not None and station.ctx.broker_sync.mode == "mosquitto-dynsec"
        yield station


class ProvisioningClient:
    """A provisioning WebSocket client that records every message."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.messages.append(orjson.loads(raw))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def candidates(self) -> set[str]:
        return {m["address"] for m in self.of_type("candidate")}

    async def result(self, provisioning_id: str, timeout: float = 20.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((m for m in self.of_type("result") if m["provisioning_id"] == provisioning_id), None)

        return await wait_for(found, timeout=timeout, message=f"result of {provisioning_id}")


@contextlib.asynccontextmanager
async def ws_client(station: StationHandle, headers: dict[str, str]) -> AsyncIterator[ProvisioningClient]:
    url = station.base_url.replace("http", "ws") + "/api/v1/ws/provisioning"
    async with websockets.connect(url, additional_headers=headers) as ws:
        client = ProvisioningClient(ws)
        try:
            yield client
        finally:
            client._reader.cancel()


async def set_wifi(station: StationHandle) -> None:
    r = await station.client.put(
        "/api/v1/agent/wifi", headers=AGENT, json={"ssid": "HomeNet", "password": WIFI_PASSWORD}
    )
    assert r.status_code == 200, r.text
    assert r.json()["ssid"] == "HomeNet" and WIFI_PASSWORD not in r.text


async def add(station: StationHandle, address: str, type_id: str = "climate", **extra: Any) -> dict[str, Any]:
    r = await station.client.post(
        "/api/v1/provisioning/add",
        headers=await station.owner_headers(),
        json={"address": address, "type": type_id, **extra},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "writing" and body["id"].startswith("prv_")
    return dict(body)


async def test_client_sees_candidates_provisions_one_and_it_comes_online(ble_station: StationHandle) -> None:
    station = ble_station
    await set_wifi(station)
    owner = await station.owner_headers()
    async with ws_client(station, owner) as client:
        await wait_for(lambda: GOOD in client.candidates(), message="candidate over the WebSocket")
        assert {"type": "scan", "state": "started"} in client.messages
        candidate = next(m for m in client.of_type("candidate") if m["address"] == GOOD)
        assert candidate["name"] == "WS-ESP32-3F2A" and candidate["type_hint"] == "climate"
        r = await station.client.get("/api/v1/provisioning/candidates", headers=owner)
        assert r.json()["scanning"] is True and GOOD in {c["address"] for c in r.json()["items"]}

        started = await add(station, GOOD.lower(), name="Kitchen climate")  # addresses match in any case
        assert started["address"] == GOOD
        result = await client.result(started["id"])
        assert result["ok"] is True and result["state"] == "succeeded", result
        device_id = result["device_id"]
        states = [m["state"] for m in client.of_type("progress") if m["provisioning_id"] == started["id"]]
        assert states == ["writing", "waiting_for_join"]

        r = await station.client.get(f"/api/v1/provisioning/{started['id']}", headers=owner)
        assert r.status_code == 200 and r.json()["state"] == "succeeded" and r.json()["reason"] is None

        async def online_with_state() -> dict[str, Any] | None:
            device = await station.device(device_id)
            return device if device["status"] == "online" and device["state"] else None

        device = await wait_for(online_with_state, timeout=15, message="provisioned device online with state")
        assert device["name"] == "Kitchen climate" and device["type"] == "climate"
        assert device["firmware_version"] and "temperature" in device["state"]
        # It logged in with its own account: the one the station created and wrote to it.
        accounts = await station.ctx.broker_sync.adapter.list_usernames()  # type: ignore[union-attr]
        assert f"dev-{device_id}" in accounts

    # Events and audit name ids and outcomes, never credentials.
    results = [ev for ev in station.ctx.bus.ring if ev.type == "provisioning.result"]
    assert results and results[-1].data["ok"] is True and results[-1].station_id == station.station_id
    assert [ev for ev in station.ctx.bus.ring if ev.type == "provisioning.candidate"]
    ring = orjson.dumps([ev.data for ev in station.ctx.bus.ring]).decode()
    assert WIFI_PASSWORD not in ring and "wsm_" not in ring and "wsd_" not in ring
    r = await station.client.get("/api/v1/audit", headers=owner, params={"limit": 50})
    actions = [item["action"] for item in r.json()["items"]]
    assert {"provisioning.add", "provisioning.succeeded", "provisioning.wifi_set"} <= set(actions)
    assert WIFI_PASSWORD not in r.text


async def test_bridge_killed_mid_scan_comes_back_and_scanning_resumes(ble_station: StationHandle) -> None:
    station = ble_station
    manager = station.ctx.provisioning_manager
    assert manager is not None
    async with ws_client(station, await station.owner_headers()) as client:
        await wait_for(lambda: manager.scanning and client.candidates(), message="scan running")
        pid = manager.bridge_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_for(
            lambda: {"type": "scan", "state": "stopped", "reason": "bridge_exited"} in client.messages,
            message="client told the scan stopped",
        )
        mark = len(client.messages)
        await wait_for(lambda: manager.bridge_pid not in (None, pid), message="bridge restarted")
        await wait_for(
            lambda: {"type": "scan", "state": "started"} in client.messages[mark:], message="scan resumed"
        )
        await wait_for(
            lambda: any(m["type"] == "candidate" for m in client.messages[mark:]),
            message="candidates after the restart",
        )
        assert manager.restarts >= 1 and manager.scanning


async def test_last_client_leaving_stops_the_scan_and_clears_candidates(ble_station: StationHandle) -> None:
    station = ble_station
    manager = station.ctx.provisioning_manager
    assert manager is not None
    owner = await station.owner_headers()
    async with ws_client(station, owner) as first:
        await wait_for(lambda: GOOD in first.candidates(), message="candidates")
        async with ws_client(station, owner) as second:
            # A new client first gets the scan state and the current candidates.
            await wait_for(lambda: len(second.messages) >= 2, message="replay")
            assert second.messages[0] == {"type": "scan", "state": "started"}
            assert GOOD in {m["address"] for m in second.messages[1:] if m["type"] == "candidate"}
        await asyncio.sleep(0.3)
        assert manager.scanning and manager.client_count == 1
    await wait_for(lambda: not manager.scanning, message="scan stopped after the last client left")
    assert manager.candidates == {} and manager.client_count == 0
    await set_wifi(station)
    r = await station.client.post(
        "/api/v1/provisioning/add", headers=owner, json={"address": GOOD, "type": "climate"}
    )
    assert r.status_code == 404 and r.json()["code"] == "PROVISIONING_CANDIDATE_NOT_FOUND"


@pytest.mark.slow(13)
async def test_failures_are_reported_precisely_and_leave_nothing_behind(ble_station: StationHandle) -> None:
    station = ble_station
    owner = await station.owner_headers()
    async with ws_client(station, owner) as client:
        await wait_for(
            lambda: {WRITE_FAILS, GARBLES, NEVER_JOINS} <= client.candidates(), message="candidates"
        )
        r = await station.client.post(
            "/api/v1/provisioning/add", headers=owner, json={"address": GOOD, "type": "climate"}
        )
        assert r.status_code == 409 and r.json()["code"] == "WIFI_NOT_CONFIGURED"
        await set_wifi(station)
        r = await station.client.post(
            "/api/v1/provisioning/add", headers=owner, json={"address": GOOD, "type": "toaster"}
        )
        assert r.status_code == 422 and r.json()["code"] == "DEVICE_TYPE_UNKNOWN"
        r = await station.client.get("/api/v1/devices", headers=owner)
        assert r.json()["items"] == []  # refused requests registered nothing

        # Refused logins cannot be tied to one device (see docs/provisioning.md): the two that wait for a
        # join go one after the other; a write failure needs no waiting and runs alongside.
        never = await add(station, NEVER_JOINS)
        write_fails = await add(station, WRITE_FAILS)
        r = await station.client.post(
            "/api/v1/provisioning/add", headers=owner, json={"address": NEVER_JOINS, "type": "climate"}
        )
        assert r.status_code == 409 and r.json()["code"] == "PROVISIONING_IN_PROGRESS"
        failed = await client.result(write_fails["id"])
        assert (
            failed["ok"] is False and failed["reason"] == "write_failed" and "ATT error" in failed["detail"]
        )
        silent = await client.result(never["id"])
        assert silent["reason"] == "not_joined" and "never tried to log in" in silent["detail"], silent

        garbles = await add(station, GARBLES)
        wrong = await client.result(garbles["id"])
        assert wrong["reason"] == "wrong_credentials", wrong
        assert "refused" in wrong["detail"]

        for job in (write_fails, garbles, never):
            r = await station.client.get(f"/api/v1/provisioning/{job['id']}", headers=owner)
            assert r.json()["state"] == "failed"
            # A failed provisioning removes the device it registered, and its broker account.
            r = await station.client.get(f"/api/v1/devices/{job['device_id']}", headers=owner)
            assert r.status_code == 404
        sync = station.ctx.broker_sync
        assert sync is not None

        async def accounts_gone() -> bool:
            names = await sync.adapter.list_usernames()  # type: ignore[union-attr]
            return not any(f"dev-{job['device_id']}" in names for job in (write_fails, garbles, never))

        await wait_for(accounts_gone, message="broker accounts removed")
    r = await station.client.get("/api/v1/provisioning/prv_nope", headers=owner)
    assert r.status_code == 404 and r.json()["code"] == "PROVISIONING_NOT_FOUND"


async def test_emqx_http_denials_name_the_device_with_wrong_credentials(
    settings_factory: Callable[..., Settings], mosquitto: Broker
) -> None:
    """EMQX asks the station about every login, so a refusal names its account: two provisionings waiting
    at once are told apart, which the Mosquitto log cannot do."""
    settings = settings_factory(
        broker_admin="emqx-http",
        mqtt_url=f"mqtt://station-user:station-pw@127.0.0.1:{mosquitto.port}",
        agent_token=AGENT_TOKEN,
        ble_simulate=True,
        provisioning_join_timeout_seconds=3.0,
    )
    async with start_station(settings) as station:
        await set_wifi(station)
        async with ws_client(station, await station.owner_headers()) as client:
            await wait_for(lambda: {NEVER_JOINS, GOOD} <= client.candidates(), message="candidates")
            silent = await add(station, NEVER_JOINS)
            joins = await add(station, GOOD)
            # What EMQX asks when the first device logs in with a password it was not given.
            username = f"dev-{silent['device_id']}"
            assert await authn(station, username, "wsm_not-what-was-written", silent["device_id"]) == "deny"
            wrong = await client.result(silent["id"])
            assert wrong["reason"] == "wrong_credentials" and username in wrong["detail"], wrong
            assert (await client.result(joins["id"]))["ok"] is True


async def test_wifi_credentials_are_for_the_agent_only(ble_station: StationHandle) -> None:
    station = ble_station
    owner = await station.owner_headers()
    viewer = await station.user_headers("vera", "viewer")
    r = await station.client.get("/api/v1/provisioning/wifi", headers=owner)
    assert r.json() == {"configured": False, "ssid": None, "updated_at": None}
    body = {"ssid": "HomeNet", "password": WIFI_PASSWORD}
    r = await station.client.put("/api/v1/agent/wifi", json=body)
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"
    for headers in (owner, {"Authorization": "Bearer not-the-agent-token"}):
        r = await station.client.put("/api/v1/agent/wifi", headers=headers, json=body)
        assert r.status_code in (401, 403)
    r = await station.client.put("/api/v1/agent/wifi", headers=owner, json=body)
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    r = await station.client.get("/api/v1/agent/wifi", headers=owner)
    assert r.status_code == 403
    await set_wifi(station)
    r = await station.client.get("/api/v1/agent/wifi", headers=AGENT)
    assert r.status_code == 200 and r.json()["password"] == WIFI_PASSWORD and r.json()["ssid"] == "HomeNet"
    r = await station.client.get("/api/v1/provisioning/wifi", headers=owner)
    assert r.json()["configured"] is True and r.json()["ssid"] == "HomeNet" and "password" not in r.json()
    r = await station.client.get("/api/v1/provisioning/wifi", headers=viewer)
    assert r.status_code == 403
    r = await station.client.post(
        "/api/v1/provisioning/add", headers=viewer, json={"address": GOOD, "type": "climate"}
    )
    assert r.status_code == 403

    # Viewers may not watch (watching runs the radio); admins may.
    url = station.base_url.replace("http", "ws") + "/api/v1/ws/provisioning"
    async with websockets.connect(url, additional_headers=viewer) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    async with websockets.connect(url + "?access_token=bad") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    # Sealed at rest; in no log.
    db_url = station.settings.resolved_database_url
    if db_url.startswith("sqlite"):
        assert WIFI_PASSWORD.encode() not in (station.settings.data_dir / "waystation.db").read_bytes()
    async with station.ctx.db.session() as session:
        from waystation.provisioning.models import AgentWifi

        row = await session.get(AgentWifi, 1)
        assert row is not None and WIFI_PASSWORD not in row.password_sealed
    for path in (station.settings.data_dir / "logs").glob("*"):
        assert WIFI_PASSWORD.encode() not in path.read_bytes(), path


async def test_ble_routes_say_when_provisioning_is_off(station: StationHandle) -> None:
    assert station.ctx.provisioning_manager is None
    r = await station.client.post(
        "/api/v1/provisioning/add",
        headers=await station.owner_headers(),
        json={"address": GOOD, "type": "climate"},
    )
    assert r.status_code == 409 and r.json()["code"] == "BLE_PROVISIONING_DISABLED"


LIGHT = "24:0A:C4:7B:10:02"


async def test_concurrent_adds_of_one_address_register_one_device(ble_station: StationHandle) -> None:
    station = ble_station
    await set_wifi(station)
    owner = await station.owner_headers()
    async with ws_client(station, owner) as client:
        await wait_for(lambda: GOOD in client.candidates(), message="candidate")
        # A refused request releases the address it reserved.
        r = await station.client.post(
            "/api/v1/provisioning/add", headers=owner, json={"address": GOOD, "type": "toaster"}
        )
        assert r.status_code == 422
        body = {"address": GOOD, "type": "climate"}
        answers = await asyncio.gather(
            *(station.client.post("/api/v1/provisioning/add", headers=owner, json=body) for _ in range(4))
        )
        assert sorted(r.status_code for r in answers) == [202, 409, 409, 409], [r.text for r in answers]
        assert {r.json()["code"] for r in answers if r.status_code == 409} == {"PROVISIONING_IN_PROGRESS"}
        started = next(r.json() for r in answers if r.status_code == 202)
        assert (await client.result(started["id"]))["ok"] is True
    r = await station.client.get("/api/v1/devices", headers=owner)
    assert [d["id"] for d in r.json()["items"]] == [started["device_id"]]


async def test_an_admin_editing_the_new_device_is_not_taken_for_its_join(ble_station: StationHandle) -> None:
    station = ble_station
    station.settings.provisioning_join_timeout_seconds = 2.0
    await set_wifi(station)
    owner = await station.owner_headers()
    async with ws_client(station, owner) as client:
        await wait_for(lambda: NEVER_JOINS in client.candidates(), message="candidate")
        started = await add(station, NEVER_JOINS)

        def waiting() -> bool:
            progress = client.of_type("progress")
            return any(
                m["provisioning_id"] == started["id"] and m["state"] == "waiting_for_join" for m in progress
            )

        await wait_for(waiting, message="waiting for the join")
        r = await station.client.patch(
            f"/api/v1/devices/{started['device_id']}", headers=owner, json={"name": "Renamed meanwhile"}
        )
        assert r.status_code == 200, r.text  # a `device.updated` event for the very device being waited on
        result = await client.result(started["id"])
        assert result["ok"] is False and result["reason"] == "not_joined", result


@pytest.mark.parametrize(
    ("wifi", "accepted"),
    [
        ({"ssid": "é" * 16, "password": "x" * 63}, True),  # 32 bytes; the longest passphrase
        ({"ssid": "é" * 17, "password": "x" * 8}, False),  # 17 characters but 34 bytes
        ({"ssid": "Cafe", "password": ""}, True),  # an open network
        ({"ssid": "Cafe", "password": "seven77"}, False),  # WPA2 needs 8
        ({"ssid": "Cafe", "password": "ü" * 32}, False),  # 32 characters but 64 bytes
        ({"ssid": "Cafe", "password": "0123456789abcdef" * 4}, True),  # a raw 256-bit key in hex
        ({"ssid": "Cafe", "password": "g" * 64}, False),  # 64 characters, not hex
    ],
)
async def test_wifi_a_device_could_not_join_is_refused(
    settings_factory: Callable[..., Settings], wifi: dict[str, str], accepted: bool
) -> None:
    async with start_station(settings_factory(agent_token=AGENT_TOKEN)) as station:
        r = await station.client.put("/api/v1/agent/wifi", headers=AGENT, json=wifi)
        if accepted:
            assert r.status_code == 200, r.text
            r = await station.client.get("/api/v1/agent/wifi", headers=AGENT)
            assert r.json()["ssid"] == wifi["ssid"] and r.json()["password"] == wifi["password"]
        else:
            assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED", r.text
            assert not wifi["password"] or wifi["password"] not in r.text


async def test_a_station_admin_neither_provisions_into_nor_watches_another_station(
    ble_station: StationHandle,
) -> None:
    station = ble_station
    await set_wifi(station)
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Lab B"})
    assert r.status_code == 201, r.text
    b = r.json()["id"]
    await station.user_headers("adam", "viewer")
    r = await station.client.patch(
        f"/api/v1/stations/{station.station_id}/members/adam", headers=owner, json={"role": "admin"}
    )
    assert r.status_code == 200, r.text
    adam = await station.user_headers("adam", "viewer")  # his roles are read fresh per request: admin of A

    async with ws_client(station, owner) as owner_ws, ws_client(station, adam) as adam_ws:
        await wait_for(lambda: {GOOD, LIGHT} <= adam_ws.candidates(), message="adam sees candidates")
        r = await station.client.post(
            "/api/v1/provisioning/add",
            headers=adam,
            json={"address": GOOD, "type": "climate", "station_id": b},
        )
        assert r.status_code == 404 and r.json()["code"] == "STATION_NOT_FOUND"
        assert (await station.client.get("/api/v1/devices", headers=owner)).json()["items"] == []

        into_b = await add(station, GOOD, station_id=b)
        result = await owner_ws.result(into_b["id"])
        assert result["ok"] is True and result["station_id"] == b
        r = await station.client.get(f"/api/v1/provisioning/{into_b['id']}", headers=adam)
        assert r.status_code == 404 and r.json()["code"] == "PROVISIONING_NOT_FOUND"

        r = await station.client.post(
            "/api/v1/provisioning/add", headers=adam, json={"address": LIGHT, "type": "light"}
        )
        assert r.status_code == 202, r.text
        into_a = r.json()
        assert (await adam_ws.result(into_a["id"]))["station_id"] == station.station_id
        # The feed is in order: B's progress and result went out before A's result, and not to adam.
        seen = {m.get("provisioning_id") for m in adam_ws.messages}
        assert into_b["id"] not in seen and into_a["id"] in seen
        assert into_b["id"] in {m.get("provisioning_id") for m in owner_ws.messages}
