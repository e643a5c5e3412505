"""Rules end to end over real MQTT and HTTP: a simulated climate device crosses a threshold, the rule
fires once per cooldown, and each action does its job — a signed webhook (retried, dead-lettered and
redelivered by hand), a command the device receives, an operations-log entry, an alert in the API and
on the live event stream. Also `for_seconds`, device-event rules, changes applied at once, a failing
action, and the engine's own bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import pytest
from standardwebhooks import Webhook as StandardWebhook

from tests.helpers import DeviceClient, HttpReceiver, StationHandle, start_station, wait_for
from tests.realtime.test_sse import read_events
from tests.rules.common import FAST, create_rule, firings, temperature_rule, wait_firings
from waystation.telemetry.ingest import READINGS_EVENT


@pytest.fixture
async def receiver() -> Any:
    rx = HttpReceiver()
    await rx.start()
    yield rx
    await rx.stop()


async def create_hook(station: StationHandle, url: str) -> dict[str, Any]:
    r = await station.client.post(
        "/api/v1/webhooks",
        headers=await station.owner_headers(),
        json={"url": url, "event_types": ["rule.fired"]},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def hook_deliveries(station: StationHandle, hook_id: int) -> list[dict[str, Any]]:
    r = await station.client.get(
        f"/api/v1/webhooks/{hook_id}/deliveries", headers=await station.owner_headers()
    )
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def reading(dev: DeviceClient, value: float, pause: float = 0.15) -> None:
    """One temperature reading; the pause puts readings in separate ingest batches."""
    await dev.publish("state", {"state": {"temperature": value}})
    await asyncio.sleep(pause)


async def test_threshold_fires_once_per_cooldown_with_signed_retried_webhook(
    settings_factory: Any, receiver: HttpReceiver
) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        hook = await create_hook(station, receiver.url)
        await station.create_device("climate-1")
        rule = await create_rule(
            station, **temperature_rule("climate-1", cooldown_seconds=2, actions=[{"type": "webhook"}])
        )
        receiver.fail_next = 2  # the first two attempts fail: the delivery is retried
        async with DeviceClient(station.mqtt_port, station.station_id, "climate-1") as dev:
            await reading(dev, 25.0)  # below: nothing
            for value in (31.0, 32.0, 33.0):  # above, three times within the cooldown: one firing
                await reading(dev, value)
            await wait_for(lambda: receiver.received, message="rule.fired delivered after retries")
            assert receiver.requests == 3
            headers, body = receiver.received[0]
            payload = StandardWebhook(hook["secret"]).verify(body, headers)
            assert payload["type"] == "rule.fired"
            data = payload["data"]
            assert data["rule_id"] == rule["id"] and data["rule_name"] == "Too warm"
            assert data["value"] == 31.0 and data["channel"] == "device:climate-1/temperature"
            assert data["device_id"] == "climate-1" and data["station_id"] == station.station_id
            assert data["operator"] == "gt" and data["threshold"] == 30
            fired = await wait_firings(station, rule["id"], 1)
            assert len(fired) == 1 and fired[0]["id"] == data["firing_id"]
            # Exactly one delivery, written with the firing (not a second one from the bus fan-out).
            r = await station.client.get(
                f"/api/v1/webhooks/{hook['id']}/deliveries", headers=await station.owner_headers()
            )
            assert len(r.json()["items"]) == 1, r.text
            assert fired[0]["outcomes"] == [{"type": "webhook", "ok": True, "endpoints": 1}]

            # Once the cooldown has passed, the still-high temperature fires again.
            await asyncio.sleep(2.1)
            await reading(dev, 34.0)
            await wait_for(lambda: len(receiver.received) == 2, message="second firing delivered")
            assert len(await wait_firings(station, rule["id"], 2)) == 2
            second = StandardWebhook(hook["secret"]).verify(receiver.received[1][1], receiver.received[1][0])
            assert second["data"]["value"] == 34.0
        items = await hook_deliveries(station, hook["id"])
        assert sorted(d["attempts"] for d in items) == [1, 3] and all(
            d["status"] == "succeeded" for d in items
        )
        r = await station.client.get(f"/api/v1/rules/{rule['id']}", headers=await station.owner_headers())
        assert r.json()["last_fired_at"] is not None


async def test_dead_lettered_rule_delivery_is_redelivered_by_hand(
    settings_factory: Any, receiver: HttpReceiver
) -> None:
    async with start_station(settings_factory(delivery_max_attempts=2, **FAST)) as station:
        owner = await station.owner_headers()
        hook = await create_hook(station, receiver.url)
        await station.create_device("climate-1")
        rule = await create_rule(station, **temperature_rule("climate-1", actions=[{"type": "webhook"}]))
        receiver.status = 503
        async with DeviceClient(station.mqtt_port, station.station_id, "climate-1") as dev:
            await reading(dev, 40.0)

        async def dead() -> dict[str, Any] | None:
            items = await hook_deliveries(station, hook["id"])
            return items[0] if items and items[0]["status"] == "dead_letter" else None

        letter = await wait_for(dead, message="dead letter")
        assert letter["event_type"] == "rule.fired" and letter["attempts"] == 2 and receiver.requests == 2
        receiver.status = 200
        r = await station.client.post(f"/api/v1/deliveries/{letter['id']}/redeliver", headers=owner)
        assert r.status_code == 200, r.text
        await wait_for(lambda: receiver.received, message="redelivered")
        headers, body = receiver.received[0]
        payload = StandardWebhook(hook["secret"]).verify(body, headers)
        assert payload["data"]["rule_id"] == rule["id"] and headers["webhook-id"] == letter["message_id"]


async def test_for_seconds_ignores_a_short_spike_but_fires_when_it_holds(station: StationHandle) -> None:
    await station.create_device("climate-1")
    rule = await create_rule(station, **temperature_rule("climate-1", for_seconds=2.0))
    engine = station.ctx.rules
    assert engine is not None
    await wait_for(lambda: rule["id"] in engine.rules, message="rule loaded")
    async with DeviceClient(station.mqtt_port, station.station_id, "climate-1") as dev:
        await dev.publish("state", {"state": {"temperature": 35.0}})  # a spike …
        await wait_for(lambda: rule["id"] in engine.tracker.holds, message="the wait started")
        await dev.publish("state", {"state": {"temperature": 20.0}})  # … that ends within the 2 s
        await wait_for(lambda: rule["id"] not in engine.tracker.holds, message="the wait was reset")
        await asyncio.sleep(2.3)
        assert await firings(station, rule["id"]) == []

        await reading(dev, 35.0)
        await reading(dev, 36.0, pause=0.0)  # holds on; the timer fires once 2 s have passed
        fired = await wait_firings(station, rule["id"], 1, timeout=8)
        since = engine.tracker.holds[rule["id"]].since
    assert fired[0]["value"] == 36.0 and fired[0]["status"] == "ok"
    # It fired when the wait was over, not at the readings.
    fired_at = datetime.fromisoformat(fired[0]["ts"]).timestamp()
    assert fired_at - since >= 2.0
    await asyncio.sleep(0.5)
    assert len(await firings(station, rule["id"])) == 1


async def test_command_action_reaches_the_device_and_a_failing_one_is_recorded(
    station: StationHandle,
) -> None:
    await station.create_device("climate-1")
    await station.create_device("fan-1")  # a climate-type device that accepts set_interval
    rule = await create_rule(
        station,
        **temperature_rule(
            "climate-1",
            cooldown_seconds=0.5,
            actions=[
                {
                    "type": "command",
                    "device_id": "fan-1",
                    "action": "set_interval",
                    "params": {"interval_s": 5},
                },
                {"type": "log", "level": "info"},
            ],
        ),
    )
    async with (
        DeviceClient(station.mqtt_port, station.station_id, "climate-1") as sensor,
        DeviceClient(station.mqtt_port, station.station_id, "fan-1") as fan,
    ):
        await fan.publish("heartbeat", {"status": "online"})
        await wait_for(lambda: station.ctx.devices.known["fan-1"].status == "online", message="fan online")  # type: ignore[union-attr]
        await reading(sensor, 31.0)
        commands = await wait_for(lambda: fan.messages("command"), message="command on the device's topic")
        assert commands[0]["action"] == "set_interval" and commands[0]["interval_s"] == 5
        first = (await wait_firings(station, rule["id"], 1))[0]
        command, log_outcome = first["outcomes"]
        assert command == {
            "type": "command",
            "ok": True,
            "device_id": "fan-1",
            "request_id": commands[0]["request_id"],
            "status": "sent",
        }
        assert log_outcome["ok"] is True and first["status"] == "ok"
        r = await station.client.get("/api/v1/devices/fan-1/commands", headers=await station.owner_headers())
        assert r.json()["items"][0]["request_id"] == commands[0]["request_id"]

        # The target device goes away: the command fails, the rest of the firing and the rule go on.
        r = await station.client.delete("/api/v1/devices/fan-1", headers=await station.owner_headers())
        assert r.status_code == 204
        await asyncio.sleep(0.6)
        await reading(sensor, 32.0)
        second = (await wait_firings(station, rule["id"], 2))[0]
        assert second["status"] == "partial" and second["value"] == 32.0
        assert second["outcomes"][0]["ok"] is False
        assert second["outcomes"][0]["error"].startswith("DEVICE_NOT_FOUND")
        assert second["outcomes"][1]["ok"] is True
        await asyncio.sleep(0.6)
        await reading(sensor, 33.0)
        third = (await wait_firings(station, rule["id"], 3))[0]
        assert third["value"] == 33.0 and third["status"] == "partial"
    status = (await station.client.get("/api/v1/status/rules", headers=await station.owner_headers())).json()
    assert status["engine"]["action_failures"] == 2 and status["engine"]["fired"] == 3

    # The rule with its now dangling command can still be paused and renamed; a new command to the
    # missing device is refused.
    owner = await station.owner_headers()
    r = await station.client.patch(f"/api/v1/rules/{rule['id']}", headers=owner, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = await station.client.patch(
        f"/api/v1/rules/{rule['id']}",
        headers=owner,
        json={"actions": [{"type": "command", "device_id": "fan-1", "action": "reboot"}]},
    )
    assert (r.status_code, r.json()["code"]) == (422, "RULE_INVALID")


async def test_log_and_alert_actions_with_live_events(station: StationHandle) -> None:
    owner = await station.owner_headers()
    viewer = await station.user_headers("vic", "viewer")
    member = await station.user_headers("meg", "member")
    await station.create_device("climate-1")
    got: list[dict[str, Any]] = []
    reader = asyncio.create_task(
        read_events(station.client, "/api/v1/events/stream?types=rule.*,alert.*,log.entry", viewer, got)
    )
    try:
        rule = await create_rule(
            station,
            **temperature_rule(
                "climate-1",
                cooldown_seconds=0.5,
                actions=[
                    {"type": "log", "level": "warning", "message": "{rule}: {value} °C on {device_id}"},
                    {"type": "alert", "severity": "critical"},
                    {"type": "webhook"},
                ],
            ),
        )
        async with DeviceClient(station.mqtt_port, station.station_id, "climate-1") as dev:
            await reading(dev, 31.5)
            first = (await wait_firings(station, rule["id"], 1))[0]
            assert first["status"] == "ok"

            # The operations log has the entry.
            r = await station.client.get("/api/v1/log", headers=viewer, params={"source": "rule"})
            entry = r.json()["items"][0]
            assert entry["message"] == "Too warm: 31.5 °C on climate-1" and entry["level"] == "warning"
            assert entry["related"] == {
                "rule_id": rule["id"],
                "firing_id": first["id"],
                "device_id": "climate-1",
            }
            assert first["outcomes"][0] == {"type": "log", "ok": True, "log_entry_id": entry["id"]}

            # The alert is active and visible to viewers.
            alerts = (await station.client.get("/api/v1/alerts", headers=viewer)).json()["items"]
            assert len(alerts) == 1
            alert = alerts[0]
            assert alert["severity"] == "critical" and alert["status"] == "active" and alert["count"] == 1
            assert alert["rule_id"] == rule["id"] and alert["value"] == 31.5
            assert alert["message"] == "Rule 'Too warm' fired: device:climate-1/temperature = 31.5 (> 30)"
            status = (await station.client.get("/api/v1/status/rules", headers=viewer)).json()
            assert status["alerts"] == {"active": 1, "by_severity": {"info": 0, "warning": 0, "critical": 1}}
            assert status["engine"]["lag_seconds"] is not None and status["engine"]["rules_loaded"] == 1

            # Firing again while it is active bumps the same alert.
            await asyncio.sleep(0.6)
            await reading(dev, 33.0)
            await wait_firings(station, rule["id"], 2)
            again = (await station.client.get(f"/api/v1/alerts/{alert['id']}", headers=viewer)).json()
            assert again["count"] == 2 and again["value"] == 33.0

            # Viewers cannot acknowledge; members can (once).
            r = await station.client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=viewer)
            assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_ROLE")
            r = await station.client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=member)
            assert r.status_code == 200, r.text
            acked = r.json()
            assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "user:meg"
            r = await station.client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=owner)
            assert r.json()["acknowledged_by"] == "user:meg"
            assert (await station.client.get("/api/v1/alerts", headers=viewer)).json()["items"] == []
            history = (await station.client.get("/api/v1/alerts?status=all", headers=viewer)).json()["items"]
            assert [a["id"] for a in history] == [alert["id"]]

            # After the acknowledgement, the next firing raises a new alert.
            await asyncio.sleep(0.6)
            await reading(dev, 34.0)
            await wait_firings(station, rule["id"], 3)
            active = (await station.client.get("/api/v1/alerts", headers=viewer)).json()["items"]
            assert len(active) == 1 and active[0]["id"] != alert["id"] and active[0]["count"] == 1

        def seen(kind: str) -> list[dict[str, Any]]:
            return [e for e in got if e["event"] == kind]

        await wait_for(lambda: len(seen("alert.raised")) == 3 and seen("alert.acknowledged"), message="SSE")
        assert len(seen("rule.fired")) == 3 and len(seen("log.entry")) == 3
        raised = seen("alert.raised")
        assert [e["data"]["new"] for e in raised] == [True, False, True]
        assert raised[0]["data"]["id"] == alert["id"] and raised[0]["data"]["severity"] == "critical"
        assert seen("alert.acknowledged")[0]["data"]["id"] == alert["id"]
        assert seen("rule.changed")[0]["data"] == {"rule_id": rule["id"], "change": "created"}
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    audit = (await station.client.get("/api/v1/audit", headers=owner, params={"action": "alert.ack"})).json()
    assert [a["actor"] for a in audit["items"]] == ["user:meg"]
    metrics = (await station.client.get("/metrics")).text
    assert "waystation_rule_firings_total 3.0" in metrics
    assert "waystation_rule_lag_seconds_count" in metrics


async def test_device_event_rule(station: StationHandle) -> None:
    await station.create_device("pir-1", "pir")
    await station.create_device("pir-2", "pir")
    motion = await create_rule(
        station,
        name="Motion at the door",
        channel=None,
        event="motion_detected",
        device_id="pir-1",
        cooldown_seconds=0,
        actions=[{"type": "alert", "severity": "info", "message": "{event} at {device_id}"}],
    )
    crowd = await create_rule(
        station,
        name="Crowd",
        event="people_counted",
        operator="gte",
        threshold=5,
        cooldown_seconds=0,
        actions=[{"type": "log"}],
    )
    async with (
        DeviceClient(station.mqtt_port, station.station_id, "pir-1") as one,
        DeviceClient(station.mqtt_port, station.station_id, "pir-2") as two,
    ):
        await two.publish(
            "event", {"event": "device_event", "data": {"action": "motion_detected"}}
        )  # other device
        await one.publish(
            "event", {"event": "device_event", "data": {"action": "door_opened"}}
        )  # other event
        await one.publish(
            "event", {"event": "device_event", "data": {"action": "people_counted", "value": 2}}
        )
        await asyncio.sleep(0.3)
        await one.publish("event", {"event": "device_event", "data": {"action": "motion_detected"}})
        fired = await wait_firings(station, motion["id"], 1)
        await two.publish(
            "event", {"event": "device_event", "data": {"action": "people_counted", "value": 7}}
        )
        counted = await wait_firings(station, crowd["id"], 1)
        await asyncio.sleep(0.3)
    assert len(await firings(station, motion["id"])) == 1 and len(await firings(station, crowd["id"])) == 1
    assert fired[0]["device_id"] == "pir-1" and fired[0]["value"] is None and fired[0]["channel"] is None
    assert fired[0]["reading_ts"] is not None
    assert counted[0]["device_id"] == "pir-2" and counted[0]["value"] == 7.0
    alert = (await station.client.get("/api/v1/alerts", headers=await station.owner_headers())).json()[
        "items"
    ][0]
    assert alert["message"] == "motion_detected at pir-1" and alert["device_id"] == "pir-1"


async def test_changes_apply_at_once(station: StationHandle) -> None:
    owner = await station.owner_headers()
    await station.create_device("climate-1")
    rule = await create_rule(station, **temperature_rule("climate-1", cooldown_seconds=0, enabled=False))
    engine = station.ctx.rules
    assert engine is not None
    async with DeviceClient(station.mqtt_port, station.station_id, "climate-1") as dev:
        await reading(dev, 35.0, pause=0.5)  # disabled: nothing
        r = await station.client.patch(
            f"/api/v1/rules/{rule['id']}", headers=owner, json={"enabled": True, "threshold": 40}
        )
        assert r.status_code == 200
        await wait_for(lambda: rule["id"] in engine.rules, message="enabled rule loaded")
        await reading(dev, 35.0, pause=0.5)  # below the new threshold
        assert await firings(station, rule["id"]) == []
        await reading(dev, 41.0)
        assert [f["value"] for f in await wait_firings(station, rule["id"], 1)] == [41.0]
        r = await station.client.delete(f"/api/v1/rules/{rule['id']}", headers=owner)
        assert r.status_code == 204
        await wait_for(lambda: rule["id"] not in engine.rules, message="deleted rule dropped")


async def test_a_full_queue_drops_and_counts_but_never_blocks(settings_factory: Any) -> None:
    async with start_station(settings_factory(rules_queue_size=100)) as station:
        engine = station.ctx.rules
        assert engine is not None
        # Published in one go, without yielding to the engine: the bus never waits for a subscriber.
        for _ in range(350):
            station.ctx.bus.emit(READINGS_EVENT, {"readings": []}, station.station_id)
        await wait_for(lambda: engine.dropped >= 250, message="dropped events counted")
        metrics = (await station.client.get("/metrics")).text
        line = next(x for x in metrics.splitlines() if x.startswith("waystation_rule_events_dropped_total "))
        assert float(line.split()[1]) >= 250
        status = (
            await station.client.get("/api/v1/status/rules", headers=await station.owner_headers())
        ).json()
        assert status["engine"]["dropped_events"] >= 250


def test_rule_fired_is_a_deliverable_event() -> None:
    from waystation.webhooks.events import DELIVERABLE_TYPES, check_patterns

    assert "rule.fired" in DELIVERABLE_TYPES and check_patterns(["rule.*"]) is None


async def test_a_spike_hidden_by_a_later_value_in_the_same_batch_still_fires(settings_factory: Any) -> None:
    """One HTTP batch stores 25, 35, 26 for one channel: screens get only the latest value (26), the rule
    engine gets every reading and fires on 35."""
    async with start_station(settings_factory(**FAST)) as station:
        await station.create_device("climate-9")
        rule = await create_rule(station, **temperature_rule("climate-9"))
        headers = await station.owner_headers()
        channel = "device:climate-9/temperature"
        items = [
            {"channel": channel, "value": value, "ts": f"2026-11-22T10:00:0{i}Z"}
            for i, value in enumerate((25.0, 35.0, 26.0))
        ]
        sub = station.ctx.bus.subscribe()  # what SSE sees: everything, but no internal events
        r = await station.client.post("/api/v1/datapoints/batch", headers=headers, json={"items": items})
        assert r.status_code == 200 and r.json()["stored"] == 3, r.text
        fired = await wait_firings(station, rule["id"], 1)
        assert [f["value"] for f in fired] == [35.0]
        seen = []
        while (ev := sub.get_nowait()) is not None:
            seen.append(ev)
        sub.close()
        batches = [ev for ev in seen if getattr(ev, "type", "") == "telemetry.batch"]
        assert batches and batches[0].data["items"] == [
            {"channel": channel, "ts": "2026-11-22T10:00:02+00:00", "value": 26.0}
        ]
        assert not [ev for ev in seen if getattr(ev, "type", "").startswith("_")]
        assert all(not ev.type.startswith("_") for ev in station.ctx.bus.ring)
