"""`GET /api/v1/audit`: filters by actor, action, target, target type, station and time, with cursor paging
that keeps the filters, and the actor each kind of caller is written as."""

from __future__ import annotations

from typing import Any

from tests.helpers import StationHandle, start_station

AGENT_TOKEN = "agent-secret-value-123"


async def _audit(station: StationHandle, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every page of the filtered list, following `next_cursor` with the same filters."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await station.client.get("/api/v1/audit", headers=headers, params=query)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_filters_by_target_station_and_time_and_pages_through_them(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with start_station(settings_factory(agent_token=AGENT_TOKEN)) as station:
        owner = await station.owner_headers()
        r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Lab B"})
        b = r.json()["id"]
        for i in range(3):
            await station.create_device(f"au-{i}", "light")
        await station.create_device("au-b", "light", station_id=b)
        await station.user_headers("sam", "viewer")
        r = await station.client.patch("/api/v1/devices/au-1", headers=owner, json={"name": "Lamp"})
        assert r.status_code == 200
        assert (await station.client.post("/api/v1/auth/keys/rotate", headers=owner)).status_code == 201

        everything = await _audit(station, owner)
        assert len(everything) >= 9

        one = await _audit(station, owner, target="device:au-1", limit=1)
        assert [e["action"] for e in one] == ["device.update", "device.create"]

        devices = await _audit(station, owner, target_type="device", limit=2)
        assert {e["target"] for e in devices} == {"device:au-0", "device:au-1", "device:au-2", "device:au-b"}
        assert devices == [e for e in everything if (e["target"] or "").startswith("device:")]
        # `_` in a type is a character, not a LIKE wildcard.
        keys = await _audit(station, owner, target_type="signing_key")
        assert [e["action"] for e in keys] == ["auth.key_rotate"]
        assert await _audit(station, owner, target_type="signingxkey") == []

        at_b = await _audit(station, owner, station_id=b, limit=1)
        assert {e["target"] for e in at_b} == {f"station:{b}", "device:au-b"}
        assert all(e["station_id"] == b for e in at_b)
        both = await _audit(station, owner, station_id=b, target_type="device")
        assert [e["target"] for e in both] == ["device:au-b"]

        # Time: `from` included, `to` excluded; naive times are UTC.
        oldest_first = sorted(everything, key=lambda e: e["ts"])
        middle = oldest_first[len(oldest_first) // 2]["ts"]
        later = await _audit(station, owner, limit=2, **{"from": middle})
        earlier = await _audit(station, owner, **{"to": middle})
        assert {e["ts"] for e in later} == {e["ts"] for e in everything if e["ts"] >= middle}
        assert {e["ts"] for e in earlier} == {e["ts"] for e in everything if e["ts"] < middle}
        assert len(later) + len(earlier) == len(everything)
        naive = middle.replace("+00:00", "")
        assert await _audit(station, owner, **{"from": naive}) == await _audit(
            station, owner, **{"from": middle}
        )

        for params, code in (
            ({"from": middle, "to": middle}, "INVALID_TIME_RANGE"),
            ({"target_type": "device%"}, "VALIDATION_FAILED"),
            ({"from": "yesterday"}, "VALIDATION_FAILED"),
        ):
            r = await station.client.get("/api/v1/audit", headers=owner, params=params)
            assert r.status_code == 422 and r.json()["code"] == code, params

        # A station admin sees only the stations they administer, whatever the filter asks for.
        r = await station.client.post(
            f"/api/v1/stations/{b}/members", headers=owner, json={"username": "sam", "role": "admin"}
        )
        assert r.status_code == 201
        sam = await station.user_headers("sam", "viewer")
        mine = await _audit(station, sam)
        assert mine and all(e["station_id"] == b for e in mine)
        assert await _audit(station, sam, station_id=station.station_id) == []


async def test_actors_are_written_as_documented(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with start_station(settings_factory(agent_token=AGENT_TOKEN)) as station:
        owner = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/tokens", headers=owner, json={"name": "ci-script", "scopes": ["api:write"]}
        )
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        agent = {"Authorization": f"Bearer {AGENT_TOKEN}"}
        devices = {}
        for device_id, headers in (("by-user", owner), ("by-agent", agent)):
            r = await station.client.post(
                "/api/v1/devices", headers=headers, json={"id": device_id, "type": "light"}
            )
            assert r.status_code == 201, r.text
            devices[device_id] = r.json()
        # Datapoint batches (member and up): by an API token and by a device with its own token.
        for headers in (token, {"X-Device-Token": devices["by-agent"]["device_token"]}):
            r = await station.client.post(
                "/api/v1/datapoints/batch",
                headers=headers,
                json={"items": [{"channel": "device:by-agent/level", "value": 1}]},
            )
            assert r.status_code == 200, r.text

        created = await _audit(station, owner, action="device.create")
        assert {e["target"]: e["actor"] for e in created} == {
            "device:by-user": "user:owner",
            "device:by-agent": "agent:station-agent",
        }
        assert await _audit(station, owner, actor="agent:station-agent", action="device.create") == [
            e for e in created if e["actor"] == "agent:station-agent"
        ]
        batches = await _audit(station, owner, action="datapoints.batch")
        assert sorted(e["actor"] for e in batches) == ["device:by-agent", "token:ci-script"]
