"""The rules REST API: create, read, change, delete, firings paging, validation (RULE_INVALID),
permissions and station scoping, audit, and the atomic cooldown claim."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tests.helpers import StationHandle, wait_for
from tests.rules.common import create_rule, firings, temperature_rule
from waystation.db import utcnow
from waystation.rules import service
from waystation.rules.runtime import Trigger


async def test_create_read_change_delete_with_audit(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("gh-1")
    rule = await create_rule(station, **temperature_rule("gh-1"))
    assert rule["id"] >= 1 and rule["station_id"] == station.station_id and rule["enabled"] is True
    assert rule["cooldown_seconds"] == 60 and rule["for_seconds"] == 0 and rule["last_fired_at"] is None
    assert rule["actions"] == [{"type": "log", "level": "warning", "message": None}]
    assert rule["event"] is None and rule["device_id"] is None and rule["threshold_high"] is None
    await wait_for(lambda: rule["id"] in station.ctx.rules.rules, message="engine loaded the rule")  # type: ignore[union-attr]

    r = await station.client.get(f"/api/v1/rules/{rule['id']}", headers=owner)
    assert r.status_code == 200 and r.json() == rule
    r = await station.client.get("/api/v1/rules", headers=owner)
    assert [x["id"] for x in r.json()["items"]] == [rule["id"]] and r.json()["next_cursor"] is None

    r = await station.client.patch(
        f"/api/v1/rules/{rule['id']}",
        headers=owner,
        json={"operator": "between", "threshold": 10, "threshold_high": 20.5, "for_seconds": 5},
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert (changed["operator"], changed["threshold"], changed["threshold_high"]) == ("between", 10, 20.5)
    assert changed["for_seconds"] == 5 and changed["updated_at"] > rule["updated_at"]
    spec = await wait_for(
        lambda: (s := station.ctx.rules.rules.get(rule["id"])) and s.operator == "between" and s,  # type: ignore[union-attr]
        message="engine reloaded the rule",
    )
    assert spec.threshold_high == 20.5

    r = await station.client.delete(f"/api/v1/rules/{rule['id']}", headers=owner)
    assert r.status_code == 204
    r = await station.client.get(f"/api/v1/rules/{rule['id']}", headers=owner)
    assert (r.status_code, r.json()["code"]) == (404, "RULE_NOT_FOUND")
    await wait_for(lambda: rule["id"] not in station.ctx.rules.rules, message="engine dropped the rule")  # type: ignore[union-attr]

    audit = (await station.client.get("/api/v1/audit", headers=owner, params={"limit": 10})).json()["items"]
    actions = [a["action"] for a in audit if a["action"].startswith("rule.")]
    assert actions == ["rule.delete", "rule.update", "rule.create"]
    update = next(a for a in audit if a["action"] == "rule.update")
    assert update["target"] == f"rule:{rule['id']}" and "operator" in update["summary"]


async def test_definitions_that_cannot_work_are_refused(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("gh-1")
    await station.create_device("pir-1", "pir")
    base = temperature_rule("gh-1")

    async def refused(code: str = "RULE_INVALID", **changes: object) -> dict:
        r = await station.client.post("/api/v1/rules", headers=owner, json={**base, **changes})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == code, r.text
        return dict(r.json())

    await refused(event="motion_detected")  # a channel and an event
    await refused(channel=None)  # neither
    await refused(operator=None)
    await refused(threshold=None)
    await refused(operator="between")  # no threshold_high
    await refused(operator="not_between", threshold=20, threshold_high=10)
    await refused(threshold_high=40)  # only for ranges
    await refused(device_id="gh-1")  # a channel names its device
    body = await refused(channel="device:nope/temperature")
    assert "nope" in body["detail"] and body["errors"][0]["loc"] == ["body", "channel"]
    await refused(channel=None, event="motion_detected", for_seconds=5)  # an event has no duration
    await refused(channel=None, event="motion_detected", device_id="nope")
    await refused(channel=None, event="motion_detected", operator=None, threshold=3)  # needs an operator
    body = await refused(actions=[{"type": "command", "device_id": "gh-1", "action": "set_interval"}])
    assert body["detail"].startswith("actions[0]: set_interval")  # params checked against the type
    body = await refused(actions=[{"type": "command", "device_id": "gh-1", "action": "fly", "params": {}}])
    assert "fly" in body["detail"]
    await refused(actions=[{"type": "command", "device_id": "ghost", "action": "reboot"}])
    # Shapes: 422 VALIDATION_FAILED.
    await refused("VALIDATION_FAILED", operator="ne")
    await refused("VALIDATION_FAILED", actions=[])
    await refused("VALIDATION_FAILED", actions=[{"type": "email"}])
    await refused("VALIDATION_FAILED", actions=[{"type": "log", "level": "loud"}])
    await refused("VALIDATION_FAILED", cooldown_seconds=-1)
    await refused("VALIDATION_FAILED", for_seconds=86_401)
    await refused("VALIDATION_FAILED", channel="temperature")
    await refused("VALIDATION_FAILED", surprise=1)

    # Valid: every action type, a range, an event rule with and without an operator.
    actions = [
        {"type": "webhook"},
        {"type": "log", "level": "info", "message": "{rule}: {value}"},
        {"type": "command", "device_id": "gh-1", "action": "set_interval", "params": {"interval_s": 30}},
        {"type": "alert", "severity": "critical"},
    ]
    rule = await create_rule(
        station,
        **{**base, "operator": "not_between", "threshold": 10, "threshold_high": 25, "actions": actions},
    )
    assert rule["actions"][2]["params"] == {"interval_s": 30}
    event_rule = await create_rule(
        station,
        name="Motion",
        channel=None,
        event="motion_detected",
        device_id="pir-1",
        actions=[{"type": "alert"}],
    )
    assert event_rule["channel"] is None and event_rule["operator"] is None
    await create_rule(
        station, name="Count", event="counted", operator="gte", threshold=3, actions=[{"type": "log"}]
    )

    # A PATCH is checked as a whole: this one would leave `between` without its upper bound.
    r = await station.client.patch(
        f"/api/v1/rules/{rule['id']}", headers=owner, json={"operator": "between", "threshold_high": None}
    )
    assert (r.status_code, r.json()["code"]) == (422, "RULE_INVALID")
    r = await station.client.patch(f"/api/v1/rules/{rule['id']}", headers=owner, json={"station_id": "x"})
    assert (r.status_code, r.json()["code"]) == (422, "VALIDATION_FAILED")
    r = await station.client.get(f"/api/v1/rules/{rule['id']}", headers=owner)
    assert r.json()["operator"] == "not_between" and r.json()["threshold_high"] == 25


async def test_roles_and_other_stations(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("gh-1")
    rule = await create_rule(station, **temperature_rule("gh-1"))
    viewer = await station.user_headers("vic", "viewer")
    member = await station.user_headers("meg", "member")

    # Viewers (and members) read; only admins write.
    assert (await station.client.get(f"/api/v1/rules/{rule['id']}", headers=viewer)).status_code == 200
    assert (
        await station.client.get(f"/api/v1/rules/{rule['id']}/firings", headers=viewer)
    ).status_code == 200
    r = await station.client.post("/api/v1/rules", headers=member, json=temperature_rule("gh-1"))
    assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_ROLE")
    r = await station.client.patch(f"/api/v1/rules/{rule['id']}", headers=member, json={"enabled": False})
    assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_ROLE")
    r = await station.client.delete(f"/api/v1/rules/{rule['id']}", headers=viewer)
    assert r.status_code == 403

    # An admin of station B only: station A's rules do not exist for her.
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Lab B"})
    b = r.json()["id"]
    await station.user_headers("bea", "viewer")
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=owner, json={"username": "bea", "role": "admin"}
    )
    assert r.status_code == 201, r.text
    r = await station.client.delete(f"/api/v1/stations/{station.station_id}/members/bea", headers=owner)
    assert r.status_code == 204, r.text
    bea = await station.user_headers("bea", "viewer")
    for method, path in [
        ("GET", f"/api/v1/rules/{rule['id']}"),
        ("PATCH", f"/api/v1/rules/{rule['id']}"),
        ("DELETE", f"/api/v1/rules/{rule['id']}"),
        ("GET", f"/api/v1/rules/{rule['id']}/firings"),
    ]:
        r = await station.client.request(method, path, headers=bea, json={} if method == "PATCH" else None)
        assert (r.status_code, r.json()["code"]) == (404, "RULE_NOT_FOUND"), (method, path, r.text)
    r = await station.client.post(
        "/api/v1/rules", headers=bea, json={**temperature_rule("gh-1"), "station_id": station.station_id}
    )
    assert (r.status_code, r.json()["code"]) == (404, "STATION_NOT_FOUND")
    # Nor can a rule of station B watch or command station A's devices.
    r = await station.client.post(
        "/api/v1/rules", headers=bea, json={**temperature_rule("gh-1"), "station_id": b}
    )
    assert (r.status_code, r.json()["code"]) == (422, "RULE_INVALID")
    await station.create_device("b-1", station_id=b)
    own = await create_rule(station, bea, **temperature_rule("b-1"), station_id=b)
    r = await station.client.post(
        "/api/v1/rules",
        headers=bea,
        json={
            **temperature_rule("b-1"),
            "station_id": b,
            "actions": [{"type": "command", "device_id": "gh-1", "action": "reboot"}],
        },
    )
    assert (r.status_code, r.json()["code"]) == (422, "RULE_INVALID")
    listed = (await station.client.get("/api/v1/rules", headers=bea)).json()["items"]
    assert [x["id"] for x in listed] == [own["id"]]
    everything = (await station.client.get("/api/v1/rules", headers=owner)).json()["items"]
    assert {x["id"] for x in everything} == {rule["id"], own["id"]}
    r = await station.client.post(
        "/api/v1/rules", headers=owner, json={**temperature_rule("gh-1"), "station_id": "nosuchstation"}
    )
    assert (r.status_code, r.json()["code"]) == (404, "STATION_NOT_FOUND")


async def test_firings_are_paged_newest_first(station: StationHandle) -> None:
    await station.create_device("gh-1")
    rule = await create_rule(station, **temperature_rule("gh-1", cooldown_seconds=0))
    engine = station.ctx.rules
    assert engine is not None
    spec = await wait_for(lambda: engine.rules.get(rule["id"]), message="rule loaded")
    now = utcnow()
    for i in range(3):
        fired = await engine.fire(
            spec, Trigger(31.0 + i, None, spec.channel, "gh-1"), now + timedelta(seconds=i)
        )
        assert fired is not None
    page = await firings(station, rule["id"], limit=2)
    assert [f["value"] for f in page] == [33.0, 32.0]
    r = await station.client.get(
        f"/api/v1/rules/{rule['id']}/firings", headers=await station.owner_headers(), params={"limit": 2}
    )
    rest = await firings(station, rule["id"], limit=2, cursor=r.json()["next_cursor"])
    assert [f["value"] for f in rest] == [31.0]
    assert rest[0]["status"] == "ok" and rest[0]["outcomes"][0]["type"] == "log"
    assert rest[0]["outcomes"][0]["ok"] is True and rest[0]["channel"] == "device:gh-1/temperature"
    r = await station.client.get(
        f"/api/v1/rules/{rule['id']}/firings", headers=await station.owner_headers(), params={"cursor": "zzz"}
    )
    assert (r.status_code, r.json()["code"]) == (400, "BAD_REQUEST")


async def test_cooldown_claim_is_atomic(station: StationHandle) -> None:
    """Concurrent check-and-sets (as from several workers) fire the rule once per cooldown."""
    await station.create_device("gh-1")
    rule = await create_rule(station, **temperature_rule("gh-1", cooldown_seconds=60))
    db = station.ctx.db
    now = utcnow()

    async def claim(at: timedelta = timedelta(0)) -> bool:
        async with db.session() as session:
            return await service.claim_firing(session, rule["id"], now + at, 60)

    results = await asyncio.gather(*(claim() for _ in range(8)))
    assert results.count(True) == 1
    assert not await claim(timedelta(seconds=59))  # still cooling down
    assert await claim(timedelta(seconds=60))  # exactly one cooldown later: free again

    # Through the engine: two evaluations of the same reading at once record one firing.
    engine = station.ctx.rules
    assert engine is not None
    spec = await wait_for(lambda: engine.rules.get(rule["id"]), message="rule loaded")
    later = now + timedelta(seconds=200)
    trigger = Trigger(35.0, None, spec.channel, "gh-1")
    fired = await asyncio.gather(engine.fire(spec, trigger, later), engine.fire(spec, trigger, later))
    assert sum(1 for f in fired if f is not None) == 1
    assert len(await firings(station, rule["id"])) == 1

    # A disabled rule cannot be claimed at all.
    r = await station.client.patch(
        f"/api/v1/rules/{rule['id']}", headers=await station.owner_headers(), json={"enabled": False}
    )
    assert r.status_code == 200
    assert not await claim(timedelta(days=1))


async def test_a_rule_may_name_a_controller_channel_before_its_first_reading(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/controllers", headers=owner, json={"id": "greenhouse"})
    assert r.status_code == 201, r.text
    body = {"name": "Dry soil", "operator": "lt", "threshold": 20, "actions": [{"type": "log"}]}
    await create_rule(station, **body, channel="controller:greenhouse/soil")
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "elsewhere"})
    other = r.json()["id"]
    r = await station.client.post(
        "/api/v1/controllers", headers=owner, json={"id": "far", "station_id": other}
    )
    assert r.status_code == 201, r.text
    # Another station's controller, and one that does not exist, are refused.
    await create_rule(station, expect=422, **body, channel="controller:far/soil")
    await create_rule(station, expect=422, **body, channel="controller:nobody/soil")
