"""Dashboards over HTTP: CRUD, per-kind widget configs, personal vs shared visibility, other stations,
and bulk layout changes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import StationHandle
from waystation.devices.service import encode_cursor


async def _second_station(station: StationHandle) -> str:
    r = await station.client.post(
        "/api/v1/stations", headers=await station.owner_headers(), json={"name": "Lab B"}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _write_point(station: StationHandle, channel: str, value: float) -> None:
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=await station.owner_headers(),
        json={"items": [{"channel": channel, "value": value}]},
    )
    assert r.status_code == 200, r.text


async def _dashboard(
    station: StationHandle, headers: dict[str, str], name: str = "Greenhouse", **extra: Any
) -> dict[str, Any]:
    r = await station.client.post("/api/v1/dashboards", headers=headers, json={"name": name, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _widget(
    station: StationHandle,
    headers: dict[str, str],
    dashboard_id: int,
    kind: str,
    config: dict[str, Any],
    position: dict[str, int] | None = None,
    title: str = "",
) -> dict[str, Any]:
    r = await station.client.post(
        f"/api/v1/dashboards/{dashboard_id}/widgets",
        headers=headers,
        json={
            "kind": kind,
            "title": title,
            "position": position or {"x": 0, "y": 0, "w": 4, "h": 3},
            "config": config,
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_create_read_change_and_delete_a_dashboard_with_widgets(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("gh-1", "climate")
    await _write_point(station, "device:gh-1/temperature", 21.5)
    dash = await _dashboard(station, owner, shared=True)
    assert dash["station_id"] == station.station_id and dash["shared"] is True
    assert dash["owner_id"] is None and dash["widgets"] == []
    assert dash["layout"] == {"columns": 12, "row_height": 80}
    base = f"/api/v1/dashboards/{dash['id']}"

    chart = await _widget(
        station,
        owner,
        dash["id"],
        "line_chart",
        {"channels": ["device:gh-1/temperature", "device:gh-1/humidity"], "range": "6h"},
        {"x": 0, "y": 3, "w": 8, "h": 4},
        title="Climate",
    )
    # Defaults are filled in, so clients read one complete shape.
    assert chart["config"] == {
        "channels": ["device:gh-1/temperature", "device:gh-1/humidity"],
        "range": "6h",
        "bucket": "auto",
        "min": None,
        "max": None,
    }
    gauge = await _widget(
        station,
        owner,
        dash["id"],
        "gauge",
        {"channel": "device:gh-1/temperature", "min": -10, "max": 40, "unit": "°C"},
        {"x": 0, "y": 0, "w": 3, "h": 3},
    )
    stat = await _widget(
        station,
        owner,
        dash["id"],
        "stat",
        {"channel": "device:gh-1/temperature"},
        {"x": 3, "y": 0, "w": 3, "h": 3},
    )
    control = await _widget(
        station,
        owner,
        dash["id"],
        "device_control",
        {"device_id": "gh-1", "actions": ["set_interval"]},
        {"x": 6, "y": 0, "w": 3, "h": 3},
    )
    events = await _widget(
        station,
        owner,
        dash["id"],
        "event_list",
        {"min_level": "warning", "sources": ["rule", "device"], "device_id": "gh-1"},
        {"x": 8, "y": 3, "w": 4, "h": 4},
    )
    assert events["config"]["limit"] == 20

    r = await station.client.get(base, headers=owner)
    assert r.status_code == 200
    # Widgets come in reading order: top to bottom, left to right.
    assert [w["id"] for w in r.json()["widgets"]] == [
        gauge["id"],
        stat["id"],
        control["id"],
        chart["id"],
        events["id"],
    ]

    r = await station.client.patch(base, headers=owner, json={"name": "Greenhouse north"})
    assert r.status_code == 200 and r.json()["name"] == "Greenhouse north"
    assert len(r.json()["widgets"]) == 5

    r = await station.client.patch(
        f"{base}/widgets/{gauge['id']}",
        headers=owner,
        json={"title": "Air", "config": {"channel": "device:gh-1/temperature", "min": 0, "max": 30}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["title"] == "Air" and r.json()["config"]["max"] == 30 and r.json()["kind"] == "gauge"

    r = await station.client.delete(f"{base}/widgets/{stat['id']}", headers=owner)
    assert r.status_code == 204
    r = await station.client.delete(f"{base}/widgets/{stat['id']}", headers=owner)
    assert r.status_code == 404 and r.json()["code"] == "WIDGET_NOT_FOUND"

    listed = (await station.client.get("/api/v1/dashboards", headers=owner)).json()
    assert [d["id"] for d in listed["items"]] == [dash["id"]] and listed["next_cursor"] is None
    assert "widgets" not in listed["items"][0]

    assert (await station.client.delete(base, headers=owner)).status_code == 204
    r = await station.client.get(base, headers=owner)
    assert r.status_code == 404 and r.json()["code"] == "DASHBOARD_NOT_FOUND"
    assert r.headers["content-type"].startswith("application/problem+json")

    audit = (await station.client.get("/api/v1/audit?limit=50", headers=owner)).json()["items"]
    actions = [a["action"] for a in audit if a["target"] == f"dashboard:{dash['id']}"]
    assert {
        "dashboard.create",
        "dashboard.update",
        "dashboard.widget_add",
        "dashboard.widget_update",
        "dashboard.widget_delete",
        "dashboard.delete",
    } <= set(actions)


@pytest.mark.parametrize(
    ("kind", "config", "loc"),
    [
        ("line_chart", {"channels": []}, ["body", "config", "channels"]),
        ("line_chart", {"channels": ["device:gh-1/temperature"], "range": "2y"}, ["body", "config", "range"]),
        ("line_chart", {"channels": ["not a channel"]}, ["body", "config", "channels", 0]),
        (
            "line_chart",
            {"channels": ["device:gh-1/temperature", "device:gh-1/temperature"]},
            ["body", "config"],
        ),
        ("gauge", {"channel": "device:gh-1/temperature", "min": 0}, ["body", "config", "max"]),
        ("gauge", {"channel": "device:gh-1/temperature", "min": 5, "max": 5}, ["body", "config"]),
        ("stat", {"channel": "device:gh-1/temperature", "colour": "red"}, ["body", "config", "colour"]),
        ("stat", {"min": 1}, ["body", "config", "channel"]),
        ("device_control", {}, ["body", "config", "device_id"]),
        ("device_control", {"device_id": "gh-1", "actions": ["launch"]}, ["body", "config", "actions", 0]),
        ("event_list", {"min_level": "loud"}, ["body", "config", "min_level"]),
        ("event_list", {"limit": 1000}, ["body", "config", "limit"]),
    ],
)
async def test_widget_config_must_fit_its_kind(
    station: StationHandle, kind: str, config: dict[str, Any], loc: list[Any]
) -> None:
    owner = await station.owner_headers()
    await station.create_device("gh-1", "climate")
    dash = await _dashboard(station, owner, shared=True)
    r = await station.client.post(
        f"/api/v1/dashboards/{dash['id']}/widgets",
        headers=owner,
        json={"kind": kind, "position": {"x": 0, "y": 0, "w": 4, "h": 3}, "config": config},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "WIDGET_CONFIG_INVALID"
    assert body["errors"][0]["loc"] == loc
    assert kind in body["detail"]


async def test_widget_body_and_changed_config_are_checked_too(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("gh-1", "climate")
    dash = await _dashboard(station, owner, shared=True)
    base = f"/api/v1/dashboards/{dash['id']}/widgets"
    r = await station.client.post(
        base, headers=owner, json={"kind": "pie", "position": {"x": 0, "y": 0, "w": 1, "h": 1}, "config": {}}
    )
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"
    r = await station.client.post(
        base, headers=owner, json={"kind": "stat", "position": {"x": 0, "y": 0, "w": 0, "h": 1}, "config": {}}
    )
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"
    # A widget must end within the grid's columns.
    r = await station.client.post(
        base,
        headers=owner,
        json={
            "kind": "stat",
            "position": {"x": 10, "y": 0, "w": 4, "h": 1},
            "config": {"channel": "device:gh-1/temperature"},
        },
    )
    assert r.status_code == 422 and r.json()["code"] == "LAYOUT_INVALID"

    gauge = await _widget(
        station, owner, dash["id"], "gauge", {"channel": "device:gh-1/temperature", "min": 0, "max": 1}
    )
    # The kind stays; a new config is checked against it.
    r = await station.client.patch(f"{base}/{gauge['id']}", headers=owner, json={"config": {"channels": []}})
    assert r.status_code == 422 and r.json()["code"] == "WIDGET_CONFIG_INVALID"
    r = await station.client.patch(f"{base}/{gauge['id']}", headers=owner, json={"kind": "stat"})
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"
    unchanged = (await station.client.get(f"/api/v1/dashboards/{dash['id']}", headers=owner)).json()
    assert unchanged["widgets"][0]["config"]["max"] == 1


async def test_a_personal_dashboard_is_seen_and_changed_only_by_its_owner(station: StationHandle) -> None:
    owner = await station.owner_headers()
    alice = await station.user_headers("alice", "member")
    bob = await station.user_headers("bob", "member")
    carol = await station.user_headers("carol", "viewer")
    mine = await _dashboard(station, alice, "Alice's page")
    assert mine["shared"] is False and mine["owner_id"] is not None
    base = f"/api/v1/dashboards/{mine['id']}"

    for who in (bob, carol, owner):  # not even the installation owner
        r = await station.client.get(base, headers=who)
        assert r.status_code == 404 and r.json()["code"] == "DASHBOARD_NOT_FOUND"
        r = await station.client.patch(base, headers=who, json={"name": "mine now"})
        assert r.status_code == 404
        listed = (await station.client.get("/api/v1/dashboards", headers=who)).json()["items"]
        assert mine["id"] not in [d["id"] for d in listed]
    assert (await station.client.get(base, headers=alice)).status_code == 200
    assert [
        d["id"] for d in (await station.client.get("/api/v1/dashboards", headers=alice)).json()["items"]
    ] == [mine["id"]]

    # A viewer keeps personal dashboards of her own, and edits them.
    own = await _dashboard(station, carol, "Carol's page")
    r = await station.client.patch(f"/api/v1/dashboards/{own['id']}", headers=carol, json={"name": "Carol"})
    assert r.status_code == 200 and r.json()["name"] == "Carol"
    # …but cannot share them: sharing shows a page to the whole station, a member's call.
    r = await station.client.patch(f"/api/v1/dashboards/{own['id']}", headers=carol, json={"shared": True})
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"

    # Alice shares hers: now everyone at the station reads it and members edit it.
    r = await station.client.patch(base, headers=alice, json={"shared": True})
    assert r.status_code == 200 and r.json()["shared"] is True and r.json()["owner_id"] is None
    assert (await station.client.get(base, headers=carol)).status_code == 200
    r = await station.client.patch(base, headers=bob, json={"name": "Team page"})
    assert r.status_code == 200
    # Bob takes it back as his own personal page: the others no longer see it.
    r = await station.client.patch(base, headers=bob, json={"shared": False})
    assert r.status_code == 200 and r.json()["owner_id"] != mine["owner_id"]
    assert (await station.client.get(base, headers=alice)).status_code == 404
    assert (await station.client.get(base, headers=bob)).status_code == 200


async def test_viewers_read_shared_dashboards_and_members_edit_them(station: StationHandle) -> None:
    member = await station.user_headers("mia", "member")
    viewer = await station.user_headers("vic", "viewer")
    await station.create_device("gh-1", "climate")
    r = await station.client.post("/api/v1/dashboards", headers=viewer, json={"name": "Ours", "shared": True})
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    shared = await _dashboard(station, member, "Ours", shared=True)
    base = f"/api/v1/dashboards/{shared['id']}"
    assert (await station.client.get(base, headers=viewer)).status_code == 200
    listed = (await station.client.get("/api/v1/dashboards", headers=viewer)).json()["items"]
    assert [d["id"] for d in listed] == [shared["id"]]

    widget_body = {
        "kind": "stat",
        "position": {"x": 0, "y": 0, "w": 2, "h": 2},
        "config": {"channel": "device:gh-1/temperature"},
    }
    forbidden = [
        ("PATCH", base, {"name": "Mine"}),
        ("DELETE", base, None),
        ("POST", f"{base}/widgets", widget_body),
        ("PUT", f"{base}/layout", {"widgets": []}),
    ]
    for method, path, body in forbidden:
        r = await station.client.request(method, path, headers=viewer, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == "INSUFFICIENT_ROLE"
    r = await station.client.post(f"{base}/widgets", headers=member, json=widget_body)
    assert r.status_code == 201


async def test_api_tokens_own_no_personal_dashboards(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/tokens", headers=owner, json={"name": "kiosk", "scopes": ["api:write"]}
    )
    assert r.status_code == 201, r.text
    token = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await station.client.post("/api/v1/dashboards", headers=token, json={"name": "Kiosk"})
    assert r.status_code == 422 and r.json()["code"] == "DASHBOARD_OWNER_REQUIRED"
    r = await station.client.post("/api/v1/dashboards", headers=token, json={"name": "Kiosk", "shared": True})
    assert r.status_code == 201


async def test_another_stations_dashboards_answer_404(station: StationHandle) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    theirs = await _dashboard(station, owner, "Lab B wall", shared=True, station_id=b)
    assert theirs["station_id"] == b
    alice = await station.user_headers("alice", "member")  # member of the default station only
    base = f"/api/v1/dashboards/{theirs['id']}"
    not_found = [
        ("GET", base, None),
        ("PATCH", base, {"name": "x"}),
        ("DELETE", base, None),
        (
            "POST",
            f"{base}/widgets",
            {"kind": "event_list", "position": {"x": 0, "y": 0, "w": 2, "h": 2}, "config": {}},
        ),
        ("PUT", f"{base}/layout", {"widgets": []}),
    ]
    for method, path, body in not_found:
        r = await station.client.request(method, path, headers=alice, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["code"] == "DASHBOARD_NOT_FOUND"
    # Indistinguishable from a dashboard that does not exist.
    absent = await station.client.get("/api/v1/dashboards/999999", headers=alice)
    assert absent.json()["code"] == "DASHBOARD_NOT_FOUND"
    assert (await station.client.get("/api/v1/dashboards", headers=alice)).json()["items"] == []
    r = await station.client.post(
        "/api/v1/dashboards", headers=alice, json={"name": "Sneaky", "shared": True, "station_id": b}
    )
    assert r.status_code == 404 and r.json()["code"] == "STATION_NOT_FOUND"

    # Once she joins Lab B as a viewer she reads it, and the list can be narrowed to one station.
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=owner, json={"username": "alice", "role": "viewer"}
    )
    assert r.status_code in (200, 201), r.text
    assert (await station.client.get(base, headers=alice)).status_code == 200
    r = await station.client.patch(base, headers=alice, json={"name": "x"})
    assert r.status_code == 403
    listed = (await station.client.get(f"/api/v1/dashboards?station_id={b}", headers=alice)).json()["items"]
    assert [d["id"] for d in listed] == [theirs["id"]]


async def test_widgets_cannot_show_another_stations_channels_or_devices(station: StationHandle) -> None:
    owner = await station.owner_headers()
    b = await _second_station(station)
    await station.create_device("a-dev", "climate")
    await station.create_device("b-dev", "climate", station_id=b)
    await _write_point(station, "device:a-dev/temperature", 20.0)
    await _write_point(station, "device:b-dev/temperature", 30.0)
    dash = await _dashboard(station, owner, shared=True)  # at the default station (A)

    rejected = [
        (
            "line_chart",
            {"channels": ["device:a-dev/temperature", "device:b-dev/temperature"]},
            ["channels", 1],
        ),
        ("gauge", {"channel": "device:b-dev/temperature", "min": 0, "max": 50}, ["channel"]),
        ("stat", {"channel": "device:b-dev/humidity"}, ["channel"]),  # no data yet: the device decides
        ("device_control", {"device_id": "b-dev"}, ["device_id"]),
        ("event_list", {"device_id": "b-dev"}, ["device_id"]),
    ]
    details = []
    for kind, config, loc in rejected:
        r = await station.client.post(
            f"/api/v1/dashboards/{dash['id']}/widgets",
            headers=owner,  # even the installation owner, who sees both stations
            json={"kind": kind, "position": {"x": 0, "y": 0, "w": 4, "h": 3}, "config": config},
        )
        assert r.status_code == 422, (kind, r.text)
        assert r.json()["code"] == "WIDGET_REFERENCE_INVALID"
        assert r.json()["errors"] == [{"loc": ["body", "config", *loc], "msg": r.json()["errors"][0]["msg"]}]
        details.append(r.json()["errors"][0]["msg"])
    # Another station's device reads exactly like one that does not exist.
    r = await station.client.post(
        f"/api/v1/dashboards/{dash['id']}/widgets",
        headers=owner,
        json={
            "kind": "device_control",
            "position": {"x": 0, "y": 0, "w": 4, "h": 3},
            "config": {"device_id": "nope"},
        },
    )
    assert r.json()["errors"][0]["msg"] == details[3].replace("b-dev", "nope")

    # A changed config is checked the same way.
    ok = await _widget(station, owner, dash["id"], "stat", {"channel": "device:a-dev/temperature"})
    r = await station.client.patch(
        f"/api/v1/dashboards/{dash['id']}/widgets/{ok['id']}",
        headers=owner,
        json={"config": {"channel": "device:b-dev/temperature"}},
    )
    assert r.status_code == 422 and r.json()["code"] == "WIDGET_REFERENCE_INVALID"
    # A channel its own station's device has not written yet is fine: it appears with the first reading.
    await _widget(station, owner, dash["id"], "stat", {"channel": "device:a-dev/co2"})


async def test_layout_moves_every_widget_at_once_or_none(station: StationHandle) -> None:
    owner = await station.owner_headers()
    dash = await _dashboard(station, owner, shared=True)
    base = f"/api/v1/dashboards/{dash['id']}"
    ids = [
        (await _widget(station, owner, dash["id"], "event_list", {}, {"x": 4 * i, "y": 0, "w": 4, "h": 2}))[
            "id"
        ]
        for i in range(3)
    ]

    # Stack them vertically in reverse order, on a wider grid.
    placements = [{"id": wid, "x": 0, "y": 2 * (2 - i), "w": 24, "h": 2} for i, wid in enumerate(ids)]
    r = await station.client.put(
        f"{base}/layout",
        headers=owner,
        json={"widgets": placements, "layout": {"columns": 24, "row_height": 60}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layout"] == {"columns": 24, "row_height": 60}
    assert [w["id"] for w in body["widgets"]] == list(reversed(ids))
    assert [w["position"] for w in body["widgets"]] == [
        {"x": 0, "y": 2 * i, "w": 24, "h": 2} for i in range(3)
    ]
    before = (await station.client.get(base, headers=owner)).json()
    assert before["widgets"] == body["widgets"]

    bad_requests = [
        ({"widgets": placements[:2]}, "is missing"),  # every widget, not some
        ({"widgets": [*placements, placements[0]]}, "listed twice"),
        ({"widgets": [*placements[:2], {**placements[2], "id": 999999}]}, "not on this dashboard"),
        ({"widgets": [*placements[:2], {**placements[2], "x": 1}]}, "more than"),  # 1 + 24 > 24 columns
        ({"widgets": placements, "layout": {"columns": 12}}, "more than"),  # 24 wide on 12 columns
    ]
    for payload, words in bad_requests:
        r = await station.client.put(f"{base}/layout", headers=owner, json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert r.json()["code"] == "LAYOUT_INVALID"
        assert any(words in e["msg"] for e in r.json()["errors"]), r.json()
        # Nothing moved: the update is all or nothing.
        assert (await station.client.get(base, headers=owner)).json() == before

    # Narrowing the grid under wide widgets is refused the same way.
    r = await station.client.patch(base, headers=owner, json={"layout": {"columns": 6}})
    assert r.status_code == 422 and r.json()["code"] == "LAYOUT_INVALID"


async def test_dashboard_list_pages_with_a_cursor(station: StationHandle) -> None:
    owner = await station.owner_headers()
    made = [(await _dashboard(station, owner, f"D{i}", shared=True))["id"] for i in range(5)]
    seen: list[int] = []
    cursor = None
    while True:
        url = "/api/v1/dashboards?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await station.client.get(url, headers=owner)).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made
    # Only cursors the station handed out: junk, or an id beyond any row, is a 400 (never a driver error).
    for cursor in ("bm9wZQ==", encode_cursor("nope"), encode_cursor(str(2**40))):
        r = await station.client.get(f"/api/v1/dashboards?cursor={cursor}", headers=owner)
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
