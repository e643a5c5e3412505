"""Findings of the security review, each pinned by a test: member management by rank, memberships that
stay removed, API tokens bounded by their creator, refresh races, logout without the refresh token, streams
that notice revocation, disabled devices, and crafted input that used to give 500."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import DeviceClient, StationHandle, start_station, wait_for
from tests.realtime.test_sse import read_events


@pytest.fixture
async def station(settings_factory) -> AsyncIterator[StationHandle]:  # type: ignore[no-untyped-def]
    async with start_station(settings_factory(stream_reauth_seconds=0.3)) as handle:
        yield handle


async def _login(station: StationHandle, username: str, password: str) -> dict[str, Any]:
    r = await station.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_station_admin_cannot_demote_an_owner_through_post(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.user_headers("adm", "viewer")
    r = await station.client.post(
        f"/api/v1/stations/{station.station_id}/members",
        headers=owner,
        json={"username": "adm", "role": "admin"},
    )
    assert r.status_code == 201
    adm = await station.user_headers("adm", "viewer")
    r = await station.client.post(
        f"/api/v1/stations/{station.station_id}/members",
        headers=adm,
        json={"username": "owner", "role": "viewer"},
    )
    assert r.status_code == 403, r.text
    members = (
        await station.client.get(f"/api/v1/stations/{station.station_id}/members", headers=owner)
    ).json()
    assert {m["username"]: m["role"] for m in members["items"]}["owner"] == "owner"


async def test_a_removed_member_stays_removed(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("keep-out", "light")
    eve = await station.user_headers("eve", "member")
    assert (await station.client.get("/api/v1/devices/keep-out", headers=eve)).status_code == 200
    r = await station.client.delete(f"/api/v1/stations/{station.station_id}/members/eve", headers=owner)
    assert r.status_code == 204
    assert (await station.client.get("/api/v1/devices/keep-out", headers=eve)).status_code == 404
    await station.user_headers("bob", "viewer")  # creating someone else must not bring eve back
    r = await station.client.patch("/api/v1/users/bob", headers=owner, json={"role": "member"})
    assert r.status_code == 200
    assert (await station.client.get("/api/v1/devices/keep-out", headers=eve)).status_code == 404


async def test_api_tokens_are_bounded_by_their_creator(station: StationHandle) -> None:
    owner = await station.owner_headers()
    adm = await station.user_headers("adm", "admin")
    r = await station.client.post("/api/v1/tokens", headers=adm, json={"name": "ci", "scopes": ["api:write"]})
    assert r.status_code == 201, r.text
    token = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await station.client.post("/api/v1/devices/x/commands", headers=token, json={"action": "reboot"})
    assert r.status_code == 404  # acts as member: allowed to try, the device just does not exist

    # Demoted to viewer of the station: the token acts as viewer at most.
    r = await station.client.patch("/api/v1/users/adm", headers=owner, json={"role": "viewer"})
    assert r.status_code == 200
    await station.create_device("tok-dev", "light")
    r = await station.client.post(
        "/api/v1/devices/tok-dev/commands", headers=token, json={"action": "reboot"}
    )
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    assert (await station.client.get("/api/v1/devices/tok-dev", headers=token)).status_code == 200

    # Disabled: the token stops working altogether.
    r = await station.client.patch("/api/v1/users/adm", headers=owner, json={"disabled": True})
    assert r.status_code == 200
    r = await station.client.get("/api/v1/devices", headers=token)
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_INVALID"


async def test_parallel_refreshes_with_one_token_end_the_family(station: StationHandle) -> None:
    await station.owner_headers()
    pair = await _login(station, "owner", "owner-password-1")
    results = await asyncio.gather(
        *[
            station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            for _ in range(6)
        ]
    )
    winners = [r.json() for r in results if r.status_code == 200]
    assert len(winners) <= 1, [r.status_code for r in results]
    # Someone reused the token, so every descendant is dead, the winner's too.
    for won in winners:
        r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": won["refresh_token"]})
        assert r.status_code == 401


async def test_logout_without_the_refresh_token_still_ends_the_login(station: StationHandle) -> None:
    await station.owner_headers()
    pair = await _login(station, "owner", "owner-password-1")
    r = await station.client.post(
        "/api/v1/auth/logout", headers={"Authorization": f"Bearer {pair['access_token']}"}
    )
    assert r.status_code == 204
    r = await station.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401


async def test_an_open_event_stream_ends_when_its_user_is_disabled(station: StationHandle) -> None:
    owner = await station.owner_headers()
    viewer = await station.user_headers("vic", "viewer")
    got: list[dict[str, Any]] = []
    reader = asyncio.create_task(
        read_events(station.client, "/api/v1/events/stream?types=device.*", viewer, got)
    )
    try:
        await asyncio.sleep(0.3)
        await station.create_device("s-1", "light")
        await wait_for(lambda: any(e["data"].get("device_id") == "s-1" for e in got), message="first event")
        r = await station.client.patch("/api/v1/users/vic", headers=owner, json={"disabled": True})
        assert r.status_code == 200
        await asyncio.sleep(0.5)  # past the re-check interval
        await station.create_device("s-2", "light")
        await wait_for(lambda: reader.done(), timeout=5, message="the stream to end")
        assert all(e["data"].get("device_id") != "s-2" for e in got)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


async def test_a_disabled_device_cannot_be_bound_commanded_or_heard(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("off-1", "light")
    r = await station.client.post("/api/v1/devices/off-1/bind-token", headers=owner)
    leftover = r.json()["bind_token"]
    r = await station.client.patch("/api/v1/devices/off-1", headers=owner, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False

    r = await station.client.post("/api/v1/client/bind", json={"bind_token": leftover})
    assert r.status_code == 404  # voided when the device was disabled
    r = await station.client.post("/api/v1/devices/off-1/bind-token", headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "DEVICE_DISABLED"
    r = await station.client.post("/api/v1/devices/off-1/commands", headers=owner, json={"action": "reboot"})
    assert r.status_code == 409 and r.json()["code"] == "DEVICE_DISABLED"

    metrics = station.app.state.metrics
    before = metrics.rejected.get("device_disabled", 0)
    async with DeviceClient(station.mqtt_port, station.station_id, "off-1") as dev:
        await dev.publish("state", {"state": {"on": True}})
        await wait_for(lambda: metrics.rejected.get("device_disabled", 0) > before, message="rejection")
    assert (await station.device("off-1"))["state"] == {}

    r = await station.client.patch("/api/v1/devices/off-1", headers=owner, json={"enabled": True})
    async with DeviceClient(station.mqtt_port, station.station_id, "off-1") as dev:
        await dev.publish("state", {"state": {"on": True}})

        async def heard() -> bool:
            return (await station.device("off-1"))["state"] == {"on": True}

        await wait_for(heard, message="enabled device heard again")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def test_crafted_cursors_ranges_and_signatures_are_client_errors(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("c-1", "light")
    huge = _b64("99999999999999999999999")
    for path in (
        f"/api/v1/audit?cursor={huge}",
        f"/api/v1/devices/c-1/events?cursor={_b64('abc')}",
        f"/api/v1/webhooks?cursor={huge}",
    ):
        r = await station.client.get(path, headers=owner)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["code"] == "BAD_REQUEST"
    await station.client.post(
        "/api/v1/datapoints/batch", headers=owner, json={"items": [{"channel": "device:c-1/t", "value": 1}]}
    )
    r = await station.client.get(
        f"/api/v1/datapoints?channel=device:c-1/t&cursor={_b64('ts:' + '9' * 30)}", headers=owner
    )
    assert r.status_code == 400
    r = await station.client.get(
        "/api/v1/datapoints?channel=device:c-1/t&to=0001-01-01T00:00:00Z", headers=owner
    )
    assert r.status_code == 422 and r.json()["code"] == "INVALID_TIME_RANGE"
    r = await station.client.post(
        "/api/internal/emqx/authn",
        content=b"{}",
        headers={
            "X-Request-Timestamp": str(int(time.time())),
            "X-Request-Signature": "\u00e9\u00e9".encode("latin-1"),
        },
    )
    assert r.status_code == 401 and r.json()["code"] == "SIGNATURE_INVALID"


async def test_firmware_commands_need_an_admin_and_their_links_are_not_shown(station: StationHandle) -> None:
    owner = await station.owner_headers()
    member = await station.user_headers("mel", "member")
    await station.create_device("fw-1", "light")
    update = {
        "action": "ota_update",
        "url": "http://127.0.0.1:1/fw.bin?expires=1&sig=abc",
        "sha256": "0" * 64,
        "version": "9",
    }
    r = await station.client.post("/api/v1/devices/fw-1/commands", headers=member, json=update)
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    r = await station.client.post("/api/v1/devices/fw-1/commands", headers=owner, json=update)
    assert r.status_code == 202, r.text
    listed = (await station.client.get("/api/v1/devices/fw-1/commands", headers=member)).json()["items"]
    assert listed[0]["params"]["url"] == "http://127.0.0.1:1/fw.bin?…"
