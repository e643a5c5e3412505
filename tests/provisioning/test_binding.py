"""Client binding (PROTOCOLS §3): one-time bind tokens exchanged for device and broker credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.broker.dynsec_broker import ADMIN, dynsec_mosquitto
from tests.broker.test_dynsec import Device, _refused, can_connect, synced
from tests.helpers import StationHandle, start_station, wait_for
from waystation.broker.acl import STATION_USERNAME
from waystation.broker.models import BrokerOutbox, DeviceCredential
from waystation.config import Settings
from waystation.provisioning.models import BindToken


async def _bind_token(station: StationHandle, device_id: str) -> str:
    r = await station.client.post(
        f"/api/v1/devices/{device_id}/bind-token", headers=await station.owner_headers()
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["bind_token"].startswith("wsb_")
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)
    return str(body["bind_token"])


async def test_bind_hands_out_fresh_credentials_once(station: StationHandle) -> None:
    created = await station.create_device("bind-1", "climate")
    old_device_token = created["device_token"]
    token = await _bind_token(station, "bind-1")

    r = await station.client.post("/api/v1/client/bind", json={"bind_token": token})
    assert r.status_code == 200, r.text
    bound = r.json()
    assert bound["station_id"] == station.station_id and bound["device_id"] == "bind-1"
    mqtt = bound["mqtt"]
    assert mqtt["username"] == "dev-bind-1" and mqtt["client_id"] == "bind-1"
    assert mqtt["port"] == station.mqtt_port and mqtt["tls"] is False and mqtt["password"].startswith("wsm_")
    assert mqtt["password"] != created["mqtt"]["password"]
    root = f"station/{station.station_id}/device/bind-1"
    assert bound["topics"]["state"] == f"{root}/state"
    assert bound["topics"]["command"] == f"{root}/command"

    # The new device token works; the one from creation no longer does.
    item = {"items": [{"channel": "device:bind-1/temperature", "value": 21.5}]}
    r = await station.client.post(
        "/api/v1/datapoints/batch", headers={"X-Device-Token": bound["device_token"]}, json=item
    )
    assert r.status_code == 200, r.text
    r = await station.client.post(
        "/api/v1/datapoints/batch", headers={"X-Device-Token": old_device_token}, json=item
    )
    assert r.status_code == 401

    # Only hashes are stored; the broker learns the new password through the outbox.
    async with station.ctx.db.session() as session:
        cred = await session.get(DeviceCredential, "bind-1")
        assert cred is not None and mqtt["password"] not in (cred.password_hash, cred.password_sealed)
        assert station.ctx.box.open(cred.password_sealed) == mqtt["password"]
        ops = (await session.scalars(select(BrokerOutbox.op).where(BrokerOutbox.device_id == "bind-1"))).all()
        assert list(ops).count("upsert_client") == 2  # creation, then the bind's rotation
        stored = (await session.scalars(select(BindToken.token_hash))).all()
        assert token not in stored

    r = await station.client.post("/api/v1/client/bind", json={"bind_token": token})
    assert r.status_code == 409 and r.json()["code"] == "BIND_TOKEN_USED"


async def test_expired_and_unknown_bind_tokens(station: StationHandle) -> None:
    await station.create_device("bind-2", "light")
    token = await _bind_token(station, "bind-2")
    async with station.ctx.db.session() as session:
        await session.execute(update(BindToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    r = await station.client.post("/api/v1/client/bind", json={"bind_token": token})
    assert r.status_code == 410 and r.json()["code"] == "BIND_TOKEN_EXPIRED"
    r = await station.client.post("/api/v1/client/bind", json={"bind_token": "wsb_not-a-real-token"})
    assert r.status_code == 404 and r.json()["code"] == "BIND_TOKEN_INVALID"
    r = await station.client.post("/api/v1/client/bind", json={})
    assert r.status_code == 422


async def test_racing_binds_with_one_token_only_one_wins(station: StationHandle) -> None:
    await station.create_device("bind-3", "light")
    token = await _bind_token(station, "bind-3")
    results = await asyncio.gather(
        *[station.client.post("/api/v1/client/bind", json={"bind_token": token}) for _ in range(4)]
    )
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1, [r.text for r in results]
    assert all(c in (200, 409) for c in codes)


async def test_only_admins_of_the_device_station_issue_bind_tokens(station: StationHandle) -> None:
    await station.create_device("bind-4", "light")
    member = await station.user_headers("mo", "member")
    r = await station.client.post("/api/v1/devices/bind-4/bind-token", headers=member)
    assert r.status_code == 403
    r = await station.client.post("/api/v1/devices/nope/bind-token", headers=await station.owner_headers())
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"


# --- end to end on a real Mosquitto with dynamic security -----------------------------------------------


@pytest.fixture
async def enforced(settings_factory: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[StationHandle]:
    """A station that manages a real dynsec Mosquitto (tests/broker/dynsec_broker.py)."""
    async with dynsec_mosquitto(tmp_path / "dynsec") as broker:
        settings = settings_factory(
            mqtt_url=f"mqtt://{STATION_USERNAME}:station-bind-pw@127.0.0.1:{broker.port}",
            broker_admin="mosquitto-dynsec",
            broker_admin_username=ADMIN,
            broker_admin_password=broker.admin_password,
            broker_sync_poll_seconds=0.2,
        )
        async with start_station(settings) as station:
            yield station


async def _bind(station: StationHandle, device_id: str) -> dict[str, Any]:
    token = await _bind_token(station, device_id)
    r = await station.client.post("/api/v1/client/bind", json={"bind_token": token})
    assert r.status_code == 200, r.text
    await wait_for(lambda: synced(station), message="broker sync caught up")
    return dict(r.json())


async def test_bound_credentials_on_a_real_broker(enforced: StationHandle) -> None:
    station, port = enforced, enforced.mqtt_port
    created = await station.create_device("bind-e2e", "climate")
    await station.create_device("bind-other", "climate")
    await wait_for(lambda: synced(station), message="accounts created")
    creation = created["mqtt"]
    other_root = f"station/{station.station_id}/device/bind-other"

    # Binding replaces the credentials from creation: their live session is dropped, and they are refused.
    async with Device(station, "bind-e2e", creation) as before:
        bound = await _bind(station, "bind-e2e")
        await asyncio.wait_for(before.lost.wait(), 10)
    assert not await can_connect(
        port, username=creation["username"], password=creation["password"], client_id="bind-e2e"
    )

    mqtt, topics = bound["mqtt"], bound["topics"]
    async with Device(station, "bind-e2e", mqtt) as dev:
        assert dev.client is not None
        # Only its own topics: another device's are refused or dropped.
        assert _refused(await dev.client.subscribe(f"{other_root}/command", qos=1))
        assert _refused(await dev.client.subscribe("station/#", qos=1))
        await dev.publish(f"{other_root}/state", {"state": {"temperature": 99.0}})
        await dev.publish(topics["state"], {"state": {"temperature": 19.5}})

        async def recorded() -> bool:
            return (await station.device("bind-e2e"))["state"] == {"temperature": 19.5}

        await wait_for(recorded, message="state published with the bound credentials")
        assert (await station.device("bind-other"))["state"] in ({}, None)
        r = await station.client.post(
            "/api/v1/devices/bind-e2e/commands",
            headers=await station.owner_headers(),
            json={"action": "reboot"},
        )
        assert r.status_code == 202, r.text
        await wait_for(lambda: dev.received, message="command on the bound topic")
        assert dev.received[0][0] == topics["command"]

        # Binding again: the first bound credentials stop working, the session with them included.
        rebound = await _bind(station, "bind-e2e")
        await asyncio.wait_for(dev.lost.wait(), 10)
    login = {"username": mqtt["username"], "client_id": "bind-e2e"}
    assert not await can_connect(port, password=mqtt["password"], **login)
    assert await can_connect(port, password=rebound["mqtt"]["password"], **login)

    # Rotating the password (admin API) retires the rebound credentials too.
    r = await station.client.post(
        "/api/v1/devices/bind-e2e/mqtt-credentials", headers=await station.owner_headers()
    )
    assert r.status_code == 200, r.text
    await wait_for(lambda: synced(station), message="rotation applied")
    assert not await can_connect(port, password=rebound["mqtt"]["password"], **login)
    assert await can_connect(port, password=r.json()["password"], **login)
