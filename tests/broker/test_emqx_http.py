"""`emqx-http` mode: EMQX-shaped authentication, authorization and event calls through the real station."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.broker.test_emqx import serve_fake
from tests.helpers import StationHandle, start_station, wait_for
from waystation.auth.internal import sign
from waystation.broker.emqx_http import EmqxHttpService
from waystation.broker.fake_emqx import FakeEmqx
from waystation.bus import Event, TypeFilter

AUTHN = "/api/internal/emqx/authn"
AUTHZ = "/api/internal/emqx/authz"
EVENTS = "/api/internal/emqx/events"


@pytest.fixture
async def station(settings_factory, mosquitto) -> AsyncIterator[StationHandle]:  # type: ignore[no-untyped-def]
    # The station's own account is the user and password of its MQTT URL (Mosquitto here lets anyone in).
    settings = settings_factory(
        broker_admin="emqx-http", mqtt_url=f"mqtt://station-user:station-pw@127.0.0.1:{mosquitto.port}"
    )
    async with start_station(settings) as handle:
        yield handle


def bearer(handle: StationHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {handle.ctx.internal.secret.decode()}"}


def signed(handle: StationHandle, path: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Request-Timestamp": ts,
        "X-Request-Signature": sign(handle.ctx.internal.secret, "POST", path, "", body),
    }


async def call(handle: StationHandle, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What EMQX's HTTP authenticator/authorizer/webhook does with a bearer header configured."""
    r = await handle.client.post(path, json=payload, headers=bearer(handle))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return dict(r.json())


async def authn(handle: StationHandle, username: str, password: str, clientid: str) -> str:
    body = {"username": username, "password": password, "clientid": clientid, "peerhost": "127.0.0.1"}
    answer = await call(handle, AUTHN, body)
    assert answer["is_superuser"] is False
    return str(answer["result"])


async def authz(handle: StationHandle, username: str, clientid: str, action: str, topic: str) -> str:
    body = {"username": username, "clientid": clientid, "action": action, "topic": topic}
    return str((await call(handle, AUTHZ, body))["result"])


def service(handle: StationHandle) -> EmqxHttpService:
    svc: EmqxHttpService = handle.app.state.emqx_http
    return svc


async def new_device(handle: StationHandle, device_id: str) -> dict[str, Any]:
    created = await handle.create_device(device_id)
    return dict(created["mqtt"])


# --- authentication -----------------------------------------------------------------------------------


async def test_authn_password_and_client_id(station: StationHandle) -> None:
    mqtt = await new_device(station, "emx-1")
    user, password, client_id = mqtt["username"], mqtt["password"], mqtt["client_id"]
    assert await authn(station, user, password, client_id) == "allow"
    assert await authn(station, user, password + "x", client_id) == "deny"
    assert await authn(station, user, "", client_id) == "deny"
    assert await authn(station, user, password, "someone-else") == "deny"
    # Another device's password does not open this account.
    other = await new_device(station, "emx-2")
    assert await authn(station, user, other["password"], client_id) == "deny"
    assert await authn(station, other["username"], other["password"], other["client_id"]) == "allow"
    # Device accounts that do not exist are refused; accounts outside ours are left to EMQX's next step.
    assert await authn(station, "dev-nobody", "x", "nobody") == "deny"
    assert await authn(station, "someone", "x", "c") == "ignore"
    assert await authn(station, "", "", "c") == "ignore"


async def test_station_account(station: StationHandle) -> None:
    assert await authn(station, "station-user", "station-pw", "any-client") == "allow"
    assert await authn(station, "station-user", "wrong", "any-client") == "deny"
    sid = station.station_id
    assert await authz(station, "station-user", "c", "subscribe", "station/#") == "allow"
    assert await authz(station, "station-user", "c", "subscribe", f"station/{sid}/device/+/state") == "allow"
    assert await authz(station, "station-user", "c", "publish", f"station/{sid}/device/d/command") == "allow"
    assert await authz(station, "station-user", "c", "publish", f"station/{sid}/device/d/state") == "deny"
    assert await authz(station, "station-user", "c", "subscribe", "#") == "deny"


async def test_disabled_and_deleted_devices_are_refused(station: StationHandle) -> None:
    mqtt = await new_device(station, "emx-3")
    creds = (mqtt["username"], mqtt["password"], mqtt["client_id"])
    topic = f"station/{station.station_id}/device/emx-3/state"
    assert await authn(station, *creds) == "allow"
    owner = await station.owner_headers()
    r = await station.client.patch("/api/v1/devices/emx-3", headers=owner, json={"enabled": False})
    assert r.status_code == 200, r.text
    # The cached "allow" is dropped by the change's bus events, not after the TTL.
    assert await authn(station, *creds) == "deny"
    assert await authz(station, creds[0], creds[2], "publish", topic) == "deny"
    r = await station.client.patch("/api/v1/devices/emx-3", headers=owner, json={"enabled": True})
    assert await authn(station, *creds) == "allow"
    r = await station.client.delete("/api/v1/devices/emx-3", headers=owner)
    assert r.status_code == 204, r.text
    assert await authn(station, *creds) == "deny"
    assert await authz(station, creds[0], creds[2], "publish", topic) == "deny"


# --- live sessions: kicked through EMQX's management API --------------------------------------------------


@pytest.fixture
async def kicking_station(settings_factory, mosquitto) -> AsyncIterator[tuple[StationHandle, FakeEmqx]]:  # type: ignore[no-untyped-def]
    fake = FakeEmqx(api_key="key-2", api_secret="secret-2")
    async with serve_fake(fake) as url:
        settings = settings_factory(
            broker_admin="emqx-http",
            mqtt_url=f"mqtt://station-user:station-pw@127.0.0.1:{mosquitto.port}",
            emqx_api_url=url,
            emqx_api_key=fake.api_key,
            emqx_api_secret=fake.api_secret,
            broker_sync_backoff_base_seconds=0.05,
            broker_sync_backoff_max_seconds=0.2,
        )
        async with start_station(settings) as handle:
            yield handle, fake


async def test_disabled_deleted_and_rotated_devices_lose_their_live_session(
    kicking_station: tuple[StationHandle, FakeEmqx],
) -> None:
    station, emqx = kicking_station
    owner = await station.owner_headers()
    mqtt = await new_device(station, "kick-1")
    await new_device(station, "kick-2")
    emqx.connect("kick-1", "dev-kick-1")
    emqx.connect("kick-2", "dev-kick-2")
    emqx.connect("other", "someone-else")

    r = await station.client.patch("/api/v1/devices/kick-1", headers=owner, json={"enabled": False})
    assert r.status_code == 200, r.text
    await wait_for(lambda: emqx.kicked == ["kick-1"], message="disabled device kicked")
    assert await authn(station, mqtt["username"], mqtt["password"], "kick-1") == "deny"  # no way back in

    r = await station.client.delete("/api/v1/devices/kick-2", headers=owner)
    assert r.status_code == 204, r.text
    await wait_for(lambda: emqx.kicked == ["kick-1", "kick-2"], message="deleted device kicked")

    # Enabling again does not kick anyone; a new password ends the session opened with the old one.
    r = await station.client.patch("/api/v1/devices/kick-1", headers=owner, json={"enabled": True})
    assert r.status_code == 200, r.text
    emqx.connect("kick-1", "dev-kick-1")
    r = await station.client.post("/api/v1/devices/kick-1/mqtt-credentials", headers=owner)
    assert r.status_code == 200, r.text
    await wait_for(lambda: emqx.kicked == ["kick-1", "kick-2", "kick-1"], message="old session kicked")
    assert "other" in emqx.clients  # nobody else is touched
    # Nothing is created on EMQX: it asks the station about accounts.
    assert emqx.users == {} and emqx.rules == {}

    r = await station.client.get("/api/v1/broker/sync", headers=owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "emqx-http" and body["disconnects_clients"] is True and body["warnings"] == []
    assert body["backlog"] == 0 and body["broker_reachable"] is True
    # Still nothing to reconcile against in this mode.
    r = await station.client.post("/api/v1/broker/sync/reconcile", headers=owner)
    assert r.status_code == 503 and r.json()["code"] == "BROKER_SYNC_UNAVAILABLE"


async def test_kicks_wait_for_emqx_and_are_retried(kicking_station: tuple[StationHandle, FakeEmqx]) -> None:
    station, emqx = kicking_station
    await new_device(station, "kick-3")
    emqx.connect("kick-3", "dev-kick-3")
    emqx.fail_next(3)
    r = await station.client.delete("/api/v1/devices/kick-3", headers=await station.owner_headers())
    assert r.status_code == 204, r.text
    await wait_for(lambda: emqx.kicked == ["kick-3"], message="kicked after EMQX answered again")


async def test_without_the_management_api_the_gap_is_reported(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/broker/sync", headers=await station.owner_headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "emqx-http" and body["disconnects_clients"] is False
    assert len(body["warnings"]) == 1 and "WAYSTATION_EMQX_API_URL" in body["warnings"][0]


# --- authorization ------------------------------------------------------------------------------------


async def test_authz_own_topics_only(station: StationHandle) -> None:
    mqtt = await new_device(station, "emx-4")
    await new_device(station, "emx-5")
    user, cid, sid = mqtt["username"], mqtt["client_id"], station.station_id
    own, other = f"station/{sid}/device/emx-4", f"station/{sid}/device/emx-5"
    for leaf in ("handshake", "state", "event", "heartbeat", "command/ack"):
        assert await authz(station, user, cid, "publish", f"{own}/{leaf}") == "allow"
        assert await authz(station, user, cid, "publish", f"{other}/{leaf}") == "deny"
    for leaf in ("command", "handshake/ack"):
        assert await authz(station, user, cid, "subscribe", f"{own}/{leaf}") == "allow"
        assert await authz(station, user, cid, "subscribe", f"{other}/{leaf}") == "deny"
        # Only the station sends on these.
        assert await authz(station, user, cid, "publish", f"{own}/{leaf}") == "deny"
    assert await authz(station, user, cid, "subscribe", f"{own}/state") == "deny"
    assert await authz(station, user, cid, "subscribe", f"{own}/#") == "deny"
    assert await authz(station, user, cid, "subscribe", f"station/{sid}/device/+/command") == "deny"
    assert await authz(station, user, cid, "subscribe", f"$share/g/{own}/command") == "allow"
    assert await authz(station, user, cid, "publish", f"{own}/+") == "deny"
    assert await authz(station, user, "another-client", "publish", f"{own}/state") == "deny"
    assert await authz(station, user, cid, "all", f"{own}/state") == "deny"
    assert await authz(station, "someone", "c", "publish", f"{own}/state") == "deny"


# --- callers must prove they hold the internal secret -----------------------------------------------


async def test_unsigned_replayed_stale_and_wrong_bearer_are_refused(station: StationHandle) -> None:
    body = orjson.dumps({"username": "dev-x", "password": "p", "clientid": "x"})
    for path in (AUTHN, AUTHZ, EVENTS):
        r = await station.client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "SIGNATURE_INVALID"

    headers = signed(station, AUTHN, body)
    r = await station.client.post(AUTHN, content=body, headers=headers)
    assert r.status_code == 200 and r.json()["result"] == "deny"
    r = await station.client.post(AUTHN, content=body, headers=headers)  # the same signature again
    assert r.status_code == 401 and r.json()["code"] == "SIGNATURE_INVALID"

    stale = signed(station, AUTHN, body, timestamp=int(time.time()) - 600)
    r = await station.client.post(AUTHN, content=body, headers=stale)
    assert r.status_code == 401 and r.json()["code"] == "SIGNATURE_INVALID"

    tampered = signed(station, AUTHN, body)
    r = await station.client.post(AUTHN, content=body.replace(b"dev-x", b"dev-y"), headers=tampered)
    assert r.status_code == 401

    r = await station.client.post(AUTHN, content=body, headers={"Authorization": "Bearer not-the-secret"})
    assert r.status_code == 401 and r.json()["code"] == "SIGNATURE_INVALID"
    assert "not-the-secret" not in r.text
    r = await station.client.post(AUTHN, content=body, headers=bearer(station))
    assert r.status_code == 200


# --- the answer cache ---------------------------------------------------------------------------------


async def test_reconnect_storm_costs_one_lookup(station: StationHandle) -> None:
    mqtt = await new_device(station, "emx-6")
    creds = (mqtt["username"], mqtt["password"], mqtt["client_id"])
    assert await authn(station, *creds) == "allow"
    svc = service(station)
    before = svc.lookups
    results = await asyncio.gather(*(authn(station, *creds) for _ in range(100)))
    assert set(results) == {"allow"}
    assert await authn(station, creds[0], "wrong", creds[2]) == "deny"
    own_state = f"station/{station.station_id}/device/emx-6/state"
    assert await authz(station, creds[0], creds[2], "publish", own_state) == "allow"
    assert svc.lookups == before  # all answered from the cache
    assert svc.cache_hits >= 100

    # A cold storm for a username nobody asked about yet shares one query.
    cold = await new_device(station, "emx-7")
    before = svc.lookups
    results = await asyncio.gather(
        *(authn(station, cold["username"], cold["password"], cold["client_id"]) for _ in range(50))
    )
    assert set(results) == {"allow"}
    assert svc.lookups == before + 1

    # A change to the device drops its entry: the next call reads the database again.
    owner = await station.owner_headers()
    r = await station.client.patch("/api/v1/devices/emx-6", headers=owner, json={"name": "renamed"})
    assert r.status_code == 200
    before = svc.lookups
    assert await authn(station, *creds) == "allow"
    assert svc.lookups == before + 1


# --- presence from the rule-engine webhook ------------------------------------------------------------


def client_event(event: str, clientid: str, username: str, ts_ms: int, **extra: Any) -> dict[str, Any]:
    """The fields EMQX's rule engine gives for `$events/client_connected` / `client_disconnected`."""
    return {
        "event": event,
        "clientid": clientid,
        "username": username,
        "timestamp": ts_ms,
        "node": "emqx@127.0.0.1",
        "peername": "127.0.0.1:50312",
        "sockname": "0.0.0.0:1883",
        "proto_name": "MQTT",
        "proto_ver": 5,
        **extra,
    }


async def test_presence_from_events(station: StationHandle) -> None:
    mqtt = await new_device(station, "emx-8")
    user, cid = mqtt["username"], mqtt["client_id"]
    sub = station.ctx.bus.subscribe(TypeFilter(["device.online", "device.offline"]))
    now = int(time.time() * 1000)

    async def status() -> str:
        return str((await station.device("emx-8"))["status"])

    async def next_event() -> Event:
        item = await asyncio.wait_for(sub.get(), 10)
        assert isinstance(item, Event)
        return item

    answer = await call(station, EVENTS, client_event("client.connected", cid, user, now, keepalive=60))
    assert answer == {"applied": True}
    ev = await next_event()
    assert (ev.type, ev.data["device_id"]) == ("device.online", "emx-8")
    assert await wait_for(lambda: status(), message="online") == "online"

    # A takeover's disconnect (the device reconnected) leaves it online; so does an older event.
    taken = client_event("client.disconnected", cid, user, now + 10, reason="takenover")
    assert (await call(station, EVENTS, taken)) == {"applied": False}
    late = client_event("client.disconnected", cid, user, now - 1000, reason="normal")
    assert (await call(station, EVENTS, late)) == {"applied": False}

    gone = client_event("client.disconnected", cid, user, now + 20, reason="keepalive_timeout")
    assert (await call(station, EVENTS, gone)) == {"applied": True}
    ev = await next_event()
    assert (ev.type, ev.data["device_id"]) == ("device.offline", "emx-8")
    assert await wait_for(lambda: status(), message="offline") == "offline"

    # Events of other clients, other client ids or other kinds change nothing.
    for payload in (
        client_event("client.connected", "intruder", user, now + 30),
        client_event("client.connected", "x", "someone", now + 30),
        client_event("session.subscribed", cid, user, now + 30),
    ):
        assert (await call(station, EVENTS, payload)) == {"applied": False}
    assert sub.get_nowait() is None
    sub.close()
