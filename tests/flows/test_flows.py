"""Flows (PROTOCOLS §4) over real MQTT and HTTP: CRUD, validation, STORE_DB, POST_ENDPOINT, live changes."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import orjson

from tests.helpers import (
    Broker,
    DeviceClient,
    HttpReceiver,
    StationHandle,
    start_mosquitto,
    start_station,
    wait_for,
)

FLOW = {
    "code": "meter",
    "topic": "thirdparty/+/reading",
    "action": "STORE_DB",
    "payload_schema": {"id": "string", "temp": "number", "count": "int", "ok": "bool"},
}


async def publish(port: int, topic: str, payload: object) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        await client.publish(topic, raw, qos=1)


async def flow(station: StationHandle, code: str) -> dict:
    r = await station.client.get(f"/api/v1/flows/{code}", headers=await station.owner_headers())
    assert r.status_code == 200, r.text
    return r.json()


async def test_flow_crud_and_clear_validation_errors(station: StationHandle) -> None:
    headers = await station.owner_headers()
    r = await station.client.post("/api/v1/flows", headers=headers, json=FLOW)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["last_msg_id"] == 0 and body["stats"] == {"accepted": 0, "rejected": 0, "last_error": None}
    cases = [
        (FLOW, 409, "FLOW_EXISTS"),
        ({**FLOW, "code": "x1", "topic": "a/#/b"}, 422, "FLOW_INVALID"),
        ({**FLOW, "code": "x2", "payload_schema": {"t": "decimal"}}, 422, "FLOW_INVALID"),
        ({**FLOW, "code": "x3", "action": "POST_ENDPOINT"}, 422, "FLOW_INVALID"),
        ({**FLOW, "code": "x4", "action": "POST_ENDPOINT", "endpoint_url": "ftp://x"}, 422, "FLOW_INVALID"),
        (
            {
                **FLOW,
                "code": "x5",
                "payload_schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "objekt",
                },
            },
            422,
            "FLOW_INVALID",
        ),
        ({**FLOW, "code": "x6", "mqtt_server_id": 99}, 404, "MQTT_SERVER_NOT_FOUND"),
        ({**FLOW, "code": "bad code"}, 422, "VALIDATION_FAILED"),
        ({**FLOW, "code": "x7", "action": "DELETE_ALL"}, 422, "VALIDATION_FAILED"),
    ]
    for payload, status, code in cases:
        r = await station.client.post("/api/v1/flows", headers=headers, json=payload)
        assert (r.status_code, r.json()["code"]) == (status, code), (payload, r.text)
    r = await station.client.patch("/api/v1/flows/meter", headers=headers, json={"topic": "+bad"})
    assert r.status_code == 422
    assert (await flow(station, "meter"))["topic"] == FLOW["topic"]  # nothing changed
    r = await station.client.patch("/api/v1/flows/meter", headers=headers, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert [
        f["code"] for f in (await station.client.get("/api/v1/flows", headers=headers)).json()["items"]
    ] == ["meter"]
    member = await station.user_headers("mo", "member")
    assert (await station.client.get("/api/v1/flows", headers=member)).status_code == 403
    assert (await station.client.delete("/api/v1/flows/meter", headers=headers)).status_code == 204
    r = await station.client.get("/api/v1/flows/meter", headers=headers)
    assert r.status_code == 404 and r.json()["code"] == "FLOW_NOT_FOUND"


async def test_store_db_records_fields_counts_rejections_and_makes_datapoints(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.client.post("/api/v1/flows", headers=headers, json=FLOW)
    await wait_for(lambda: "meter" in station.ctx.flows.flows, message="flow active")
    port = station.mqtt_port
    good = {"id": "m1", "temp": 21.5, "count": 3, "ok": True, "extra": [1, 2]}
    await publish(port, "thirdparty/m1/reading", good)
    await publish(port, "thirdparty/m1/reading", {**good, "temp": True})  # bool is not a number
    await publish(port, "thirdparty/m1/reading", {**good, "count": 2.5})
    await publish(port, "thirdparty/m1/reading", {"id": "m1"})
    await publish(port, "thirdparty/m1/reading", b"{nope")
    await publish(port, "thirdparty/m2/reading", {**good, "id": "m2", "temp": 19})
    await publish(port, "elsewhere/m1/reading", good)  # not this flow's topic

    async def settled() -> dict:
        f = await flow(station, "meter")
        return f if f["stats"]["accepted"] == 2 and f["stats"]["rejected"] == 4 else {}

    f = await wait_for(settled, message="2 accepted, 4 rejected")
    assert f["last_msg_id"] == 2
    assert f["stats"]["last_error"]
    r = await station.client.get("/api/v1/flows/meter/records", headers=headers, params={"limit": 100})
    records = r.json()["items"]
    assert {(rec["msg_id"], rec["field"]) for rec in records} >= {(1, "temp"), (2, "temp"), (1, "extra")}
    assert next(rec["value"] for rec in records if rec["msg_id"] == 1 and rec["field"] == "extra") == [1, 2]

    async def points() -> list:
        r = await station.client.get(
            "/api/v1/datapoints",
            headers=headers,
            params={
                "channel": "flow:meter/temp",
                "from": "2026-01-01T00:00:00Z",
                "to": "2030-01-01T00:00:00Z",
            },
        )
        return r.json().get("items", []) if r.status_code == 200 else []

    items = await wait_for(points, message="flow datapoints")
    assert sorted(p["value"] for p in items) == [19.0, 21.5]


async def test_full_json_schema_is_accepted(station: StationHandle) -> None:
    headers = await station.owner_headers()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"level": {"type": "number", "minimum": 0, "maximum": 100}},
        "required": ["level"],
    }
    r = await station.client.post(
        "/api/v1/flows",
        headers=headers,
        json={"code": "tank", "topic": "tank/level", "action": "STORE_DB", "payload_schema": schema},
    )
    assert r.status_code == 201
    await wait_for(lambda: "tank" in station.ctx.flows.flows, message="flow active")
    await publish(station.mqtt_port, "tank/level", {"level": 42})
    await publish(station.mqtt_port, "tank/level", {"level": 420})

    async def settled() -> dict:
        f = await flow(station, "tank")
        return f if f["stats"]["accepted"] == 1 and f["stats"]["rejected"] == 1 else {}

    f = await wait_for(settled, message="1 accepted, 1 rejected")
    assert "420" in f["stats"]["last_error"] and "level" in f["stats"]["last_error"]


async def test_changes_take_effect_within_a_second(station: StationHandle) -> None:
    headers = await station.owner_headers()
    await station.client.post(
        "/api/v1/flows",
        headers=headers,
        json={"code": "live", "topic": "live/a", "action": "STORE_DB", "payload_schema": {}},
    )
    await wait_for(
        lambda: "live" in station.ctx.flows.flows, timeout=1.0, message="created flow active in 1 s"
    )
    await station.client.patch("/api/v1/flows/live", headers=headers, json={"topic": "live/b"})
    await wait_for(
        lambda: station.ctx.flows.flows.get("live") and station.ctx.flows.flows["live"].topic == "live/b",
        timeout=1.0,
        message="topic change in 1 s",
    )
    assert "live/a" not in station.ctx.mqtt.filters and "live/b" in station.ctx.mqtt.filters
    await publish(station.mqtt_port, "live/a", {"x": 1})
    await publish(station.mqtt_port, "live/b", {"x": 2})
    await wait_for(lambda: flow(station, "live"), message="flow")

    async def one() -> bool:
        return (await flow(station, "live"))["stats"]["accepted"] == 1

    await wait_for(one, message="only the new topic counts")
    await station.client.patch("/api/v1/flows/live", headers=headers, json={"enabled": False})
    await wait_for(lambda: "live" not in station.ctx.flows.flows, timeout=1.0, message="disabled in 1 s")
    assert "live/b" not in station.ctx.mqtt.filters


async def test_post_endpoint_delivers_in_order_after_the_endpoint_comes_back(settings_factory) -> None:
    receiver = HttpReceiver()
    settings = settings_factory(
        delivery_backoff_base_seconds=0.2, delivery_poll_seconds=0.1, delivery_max_attempts=50
    )
    async with start_station(settings) as station:
        headers = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/flows",
            headers=headers,
            json={
                "code": "fwd",
                "topic": "fwd/+",
                "action": "POST_ENDPOINT",
                "endpoint_url": receiver.url,
                "payload_schema": {"n": "int"},
            },
        )
        assert r.status_code == 201
        await wait_for(lambda: "fwd" in station.ctx.flows.flows, message="flow active")
        for n in range(10):  # the endpoint is down: nothing listens on its port
            await publish(station.mqtt_port, f"fwd/{n % 2}", {"n": n})

        async def attempted() -> bool:
            r = await station.client.get("/api/v1/flows/fwd/deliveries", headers=headers)
            items = r.json()["items"]
            return len(items) == 10 and any(i["attempts"] >= 2 for i in items)

        await wait_for(attempted, timeout=15, message="failed attempts recorded")
        await receiver.start()
        try:
            await wait_for(lambda: len(receiver.received) == 10, timeout=20, message="all delivered")
            bodies = [orjson.loads(b) for _, b in receiver.received]
            assert [b["payload"]["n"] for b in bodies] == list(range(10))  # in order
            assert [b["msg_id"] for b in bodies] == list(range(1, 11))
            assert bodies[0]["flow"] == "fwd" and bodies[1]["topic"] == "fwd/1"
            headers0 = receiver.received[0][0]
            assert headers0["webhook-id"].startswith("msg_") and headers0["webhook-timestamp"].isdigit()
        finally:
            await receiver.stop()


async def test_non_2xx_is_a_failure_and_ends_in_dead_letter(settings_factory) -> None:
    receiver = HttpReceiver()
    receiver.status = 302
    await receiver.start()
    settings = settings_factory(
        delivery_backoff_base_seconds=0.05, delivery_poll_seconds=0.05, delivery_max_attempts=3
    )
    try:
        async with start_station(settings) as station:
            headers = await station.owner_headers()
            await station.client.post(
                "/api/v1/flows",
                headers=headers,
                json={"code": "dl", "topic": "dl", "action": "POST_ENDPOINT", "endpoint_url": receiver.url},
            )
            await wait_for(lambda: "dl" in station.ctx.flows.flows, message="flow active")
            await publish(station.mqtt_port, "dl", {"a": 1})

            async def dead() -> list:
                r = await station.client.get("/api/v1/flows/dl/deliveries", headers=headers)
                items = r.json()["items"]
                return items if items and items[0]["status"] == "dead_letter" else []

            items = await wait_for(dead, timeout=15, message="dead letter")
            assert items[0]["attempts"] == 3 and items[0]["last_status_code"] == 302
    finally:
        await receiver.stop()


async def test_flow_on_an_extra_mqtt_server(station: StationHandle, tmp_path) -> None:
    other = start_mosquitto(tmp_path / "other")
    try:
        headers = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/mqtt-servers",
            headers=headers,
            json={
                "name": "plant",
                "host": "127.0.0.1",
                "port": other.port,
                "username": "u",
                "password": "s3cret-pw",
            },
        )
        assert r.status_code == 201
        server = r.json()
        assert server["has_password"] is True and "s3cret-pw" not in r.text
        r = await station.client.patch(
            f"/api/v1/mqtt-servers/{server['id']}", headers=headers, json={"username": None, "password": None}
        )
        assert r.json()["has_password"] is False
        await station.client.post(
            "/api/v1/flows",
            headers=headers,
            json={"code": "plant", "topic": "plant/#", "action": "STORE_DB", "mqtt_server_id": server["id"]},
        )
        await wait_for(lambda: "plant" in station.ctx.flows.flows, message="flow active")
        link = station.ctx.flows._links[server["id"]]
        await wait_for(lambda: link.connected, message="extra link connected")

        async def got() -> bool:
            return (await flow(station, "plant"))["stats"]["accepted"] >= 1

        # A message published before the subscription is in place reaches nobody (MQTT semantics), and on
        # a busy machine the link may still be (re)subscribing: publish until one arrives.
        for _ in range(30):
            await publish(other.port, "plant/line1", {"speed": 3})
            with contextlib.suppress(AssertionError):
                await wait_for(got, timeout=1.5, message="message from the other broker")
                break
        assert await got(), "no message from the other broker arrived"
        r = await station.client.delete(f"/api/v1/mqtt-servers/{server['id']}", headers=headers)
        assert r.status_code == 409 and r.json()["code"] == "MQTT_SERVER_IN_USE"
    finally:
        other.stop()


async def test_overlapping_flows_each_get_a_message_once(station: StationHandle) -> None:
    headers = await station.owner_headers()
    for code, topic in (("ov-exact", "ov/a"), ("ov-wild", "ov/+")):
        r = await station.client.post(
            "/api/v1/flows",
            headers=headers,
            json={"code": code, "topic": topic, "action": "STORE_DB", "payload_schema": {}},
        )
        assert r.status_code == 201
    await wait_for(lambda: {"ov-exact", "ov-wild"} <= set(station.ctx.flows.flows), message="flows active")
    await asyncio.sleep(0.2)
    await publish(station.mqtt_port, "ov/a", {"x": 1})

    async def both() -> bool:
        counts = [(await flow(station, c))["stats"]["accepted"] for c in ("ov-exact", "ov-wild")]
        return all(n >= 1 for n in counts)

    await wait_for(both, message="both flows got the message")
    await asyncio.sleep(0.5)
    for code in ("ov-exact", "ov-wild"):
        f = await flow(station, code)
        assert (f["stats"]["accepted"], f["last_msg_id"]) == (1, 1), code


async def test_default_mqtt_server_is_the_station_broker_when_mqtt_url_is_unset(  # type: ignore[no-untyped-def]
    settings_factory, mosquitto: Broker
) -> None:
    settings = settings_factory()
    async with start_station(settings) as station:
        r = await station.client.post(
            "/api/v1/mqtt-servers",
            headers=await station.owner_headers(),
            json={"name": "site", "host": "127.0.0.1", "port": mosquitto.port, "is_default": True},
        )
        assert r.status_code == 201, r.text
    # Start again as if WAYSTATION_MQTT_URL had never been given (it would default to the embedded broker).
    unset = settings.model_copy()
    unset.mqtt_url = "embedded://127.0.0.1:1"  # stands for the default; must not be used
    unset.model_fields_set.discard("mqtt_url")
    assert not unset.mqtt_url_configured
    async with start_station(unset) as again:
        await wait_for(lambda: again.ctx.mqtt is not None and again.ctx.mqtt.connected, message="link")
        assert again.ctx.broker is None  # no embedded broker
        assert again.ctx.settings.mqtt.port == mosquitto.port
        login = {"username": "owner", "password": "owner-password-1"}  # made by the first run's setup
        again._tokens["owner"] = (await again.client.post("/api/v1/auth/login", json=login)).json()[
            "access_token"
        ]
        await again.create_device("via-default", "light")
        async with DeviceClient(mosquitto.port, again.station_id, "via-default") as dev:
            await dev.publish("state", {"state": {"on": True}})

            async def online() -> bool:
                return (await again.device("via-default"))["status"] == "online"

            await wait_for(online, message="device online through the default server")
