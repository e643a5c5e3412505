"""Several stations: members see only their stations (404 elsewhere, as if absent), roles per station,
and nobody removes a station's last owner."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.helpers import StationHandle, start_station, wait_for
from tests.realtime.test_sse import read_events


async def _second_station(station: StationHandle) -> str:
    r = await station.client.post(
        "/api/v1/stations", headers=await station.owner_headers(), json={"name": "Lab B"}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _write_point(station: StationHandle, device_id: str, value: float) -> None:
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=await station.owner_headers(),
        json={"items": [{"channel": f"device:{device_id}/temperature", "value": value}]},
    )
    assert r.status_code == 200, r.text


async def test_a_member_of_one_station_gets_404_for_another(station: StationHandle) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    await station.create_device("a-dev", "light")
    await station.create_device("b-dev", "light", station_id=b)
    await _write_point(station, "a-dev", 1.0)
    await _write_point(station, "b-dev", 2.0)
    alice = await station.user_headers("alice", "member")  # joins the default station (A) as member

    listed = (await station.client.get("/api/v1/devices", headers=alice)).json()["items"]
    assert [d["id"] for d in listed] == ["a-dev"]
    stations = (await station.client.get("/api/v1/stations", headers=alice)).json()["items"]
    assert [s["id"] for s in stations] == [station.station_id]

    not_found = [
        ("GET", "/api/v1/devices/b-dev", None, "DEVICE_NOT_FOUND"),
        ("GET", "/api/v1/devices/b-dev/events", None, "DEVICE_NOT_FOUND"),
        ("GET", "/api/v1/devices/b-dev/commands", None, "DEVICE_NOT_FOUND"),
        ("POST", "/api/v1/devices/b-dev/commands", {"action": "reboot"}, "DEVICE_NOT_FOUND"),
        ("GET", "/api/v1/channels/device:b-dev/temperature", None, "CHANNEL_NOT_FOUND"),
        ("GET", "/api/v1/datapoints?channel=device:b-dev/temperature", None, "CHANNEL_NOT_FOUND"),
        ("GET", f"/api/v1/stations/{b}", None, "STATION_NOT_FOUND"),
        (
            "POST",
            "/api/v1/datapoints/batch",
            {"items": [{"channel": "device:b-dev/temperature", "value": 3}]},
            "DEVICE_NOT_FOUND",
        ),
    ]
    for method, path, body, code in not_found:
        r = await station.client.request(method, path, headers=alice, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["code"] == code, (method, path)
    # Same shape as a device that does not exist at all: nothing tells B's devices apart from absent ones.
    absent = await station.client.get("/api/v1/devices/no-such-device", headers=alice)
    assert absent.json()["code"] == "DEVICE_NOT_FOUND"

    channels = (await station.client.get("/api/v1/channels", headers=alice)).json()["items"]
    assert [c["id"] for c in channels] == ["device:a-dev/temperature"]
    latest = await station.client.get(
        "/api/v1/datapoints/latest?channel=device:a-dev/temperature&channel=device:b-dev/temperature",
        headers=alice,
    )
    assert [i["channel"] for i in latest.json()["items"]] == ["device:a-dev/temperature"]
    # Her own station works as before.
    assert (await station.client.get("/api/v1/devices/a-dev", headers=alice)).status_code == 200
    r = await station.client.post("/api/v1/devices/a-dev/commands", headers=alice, json={"action": "reboot"})
    assert r.status_code == 202, r.text
    # The owner (installation-wide) sees both.
    assert (await station.client.get("/api/v1/devices/b-dev", headers=owner)).status_code == 200


async def test_sse_filters_other_stations_events(station: StationHandle) -> None:
    b = await _second_station(station)
    alice = await station.user_headers("alice", "member")
    got: list[dict[str, Any]] = []
    reader = asyncio.create_task(
        read_events(station.client, "/api/v1/events/stream?types=device.*", alice, got)
    )
    try:
        await asyncio.sleep(0.3)
        await station.create_device("b-dev", "light", station_id=b)
        await station.create_device("a-dev", "light")
        await wait_for(lambda: any(e["data"].get("device_id") == "a-dev" for e in got), message="A's event")
        assert all(e["data"].get("device_id") != "b-dev" for e in got)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_roles_are_per_station(station: StationHandle) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    await station.create_device("b-dev", "light", station_id=b)
    alice = await station.user_headers("alice", "member")
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=owner, json={"username": "alice", "role": "viewer"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "viewer"

    assert (await station.client.get("/api/v1/devices/b-dev", headers=alice)).status_code == 200
    r = await station.client.post("/api/v1/devices/b-dev/commands", headers=alice, json={"action": "reboot"})
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    # Members cannot manage members.
    r = await station.client.get(f"/api/v1/stations/{b}/members", headers=alice)
    assert r.status_code == 403

    members = (await station.client.get(f"/api/v1/stations/{b}/members", headers=owner)).json()["items"]
    assert {(m["username"], m["role"]) for m in members} == {("owner", "owner"), ("alice", "viewer")}


async def test_station_admins_manage_members_but_not_owners_and_the_last_owner_stays(
    station: StationHandle,
) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    await station.user_headers("bob", "viewer")
    await station.user_headers("carol", "viewer")
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=owner, json={"username": "bob", "role": "admin"}
    )
    assert r.status_code == 201
    bob = await station.user_headers("bob", "viewer")  # same login; his roles are read fresh per request

    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=bob, json={"username": "carol", "role": "member"}
    )
    assert r.status_code == 201, r.text
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=bob, json={"username": "carol", "role": "owner"}
    )
    assert r.status_code == 403
    r = await station.client.delete(f"/api/v1/stations/{b}/members/owner", headers=bob)
    assert r.status_code == 403
    # Bob administers B, not A, and not the installation.
    r = await station.client.get(f"/api/v1/stations/{station.station_id}/members", headers=bob)
    assert r.status_code == 403  # a viewer of A
    assert (await station.client.get("/api/v1/users", headers=bob)).status_code == 403

    r = await station.client.delete(f"/api/v1/stations/{b}/members/owner", headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "LAST_OWNER"
    r = await station.client.patch(
        f"/api/v1/stations/{b}/members/owner", headers=owner, json={"role": "admin"}
    )
    assert r.status_code == 409 and r.json()["code"] == "LAST_OWNER"
    r = await station.client.delete(f"/api/v1/stations/{b}/members/carol", headers=bob)
    assert r.status_code == 204
    r = await station.client.delete(f"/api/v1/stations/{b}/members/carol", headers=bob)
    assert r.status_code == 404 and r.json()["code"] == "MEMBER_NOT_FOUND"

    audit = (await station.client.get("/api/v1/audit?action=station.member", headers=bob)).json()["items"]
    assert audit and all(e["action"] == "station.member" for e in audit)


async def test_api_token_is_bound_to_its_station(station: StationHandle) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    await station.create_device("a-dev", "light")
    await station.create_device("b-dev", "light", station_id=b)
    r = await station.client.post(
        "/api/v1/tokens", headers=owner, json={"name": "script", "scopes": ["api:write"]}
    )
    token = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await station.client.get("/api/v1/devices/a-dev", headers=token)).status_code == 200
    assert (await station.client.get("/api/v1/devices/b-dev", headers=token)).status_code == 404
    listed = (await station.client.get("/api/v1/devices", headers=token)).json()["items"]
    assert [d["id"] for d in listed] == ["a-dev"]


async def test_only_a_controller_writes_its_channels(station: StationHandle) -> None:
    alice = await station.user_headers("alice", "member")
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=alice,
        json={"items": [{"channel": "controller:someone-elses/t", "value": 1.0}]},
    )
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"


async def test_who_owns_a_new_station(settings_factory) -> None:  # type: ignore[no-untyped-def]
    """A user who creates a station owns it; the agent (no user) leaves it without members, and the
    installation's owners and admins manage it; API tokens cannot create stations."""
    agent = {"Authorization": "Bearer agent-secret-value-123"}
    async with start_station(settings_factory(agent_token="agent-secret-value-123")) as station:
        owner = await station.owner_headers()
        ada = await station.user_headers("ada", "admin")
        vic = await station.user_headers("vic", "viewer")

        r = await station.client.post("/api/v1/stations", headers=ada, json={"name": "Ada's"})
        assert r.status_code == 201
        members = (await station.client.get(f"/api/v1/stations/{r.json()['id']}/members", headers=ada)).json()
        assert [(m["username"], m["role"]) for m in members["items"]] == [("ada", "owner")]

        r = await station.client.post("/api/v1/stations", headers=agent, json={"name": "Agent's"})
        assert r.status_code == 201
        made = r.json()["id"]
        for who in (owner, ada):  # installation owners and admins see and manage it
            assert (await station.client.get(f"/api/v1/stations/{made}", headers=who)).status_code == 200
            r = await station.client.get(f"/api/v1/stations/{made}/members", headers=who)
            assert r.status_code == 200 and r.json()["items"] == []
        assert (await station.client.get(f"/api/v1/stations/{made}", headers=vic)).status_code == 404
        r = await station.client.post(
            f"/api/v1/stations/{made}/members", headers=owner, json={"username": "vic", "role": "owner"}
        )
        assert r.status_code == 201
        assert (await station.client.get(f"/api/v1/stations/{made}", headers=vic)).status_code == 200
        audit = await station.client.get("/api/v1/audit", headers=owner, params={"target": f"station:{made}"})
        actors = {e["action"]: e["actor"] for e in audit.json()["items"]}
        assert actors["station.create"] == "agent:station-agent"

        r = await station.client.post(
            "/api/v1/tokens", headers=owner, json={"name": "script", "scopes": ["api:read", "api:write"]}
        )
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await station.client.post("/api/v1/stations", headers=token, json={"name": "Token's"})
        assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
