"""Webhooks over real HTTP: Standard Webhooks signatures checked with the official `standardwebhooks`
package, retries, dead letters and redelivery, secret rotation, test pings, the per-endpoint concurrency
limit, station scoping, and deliveries that survive a restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import aiomqtt
import orjson
import pytest
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.helpers import HttpReceiver, StationHandle, start_station, wait_for
from waystation.bus import Event, TypeFilter

FAST = {"delivery_backoff_base_seconds": 0.05, "delivery_poll_seconds": 0.05}


@pytest.fixture
async def receiver() -> Any:
    rx = HttpReceiver()
    await rx.start()
    yield rx
    await rx.stop()


async def create_hook(
    station: StationHandle, url: str, headers: dict[str, str] | None = None, **extra: Any
) -> dict:
    body = {"url": url, "event_types": ["device.*"], **extra}
    r = await station.client.post(
        "/api/v1/webhooks", headers=headers or await station.owner_headers(), json=body
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def bodies(rx: HttpReceiver) -> list[dict]:
    return [orjson.loads(b) for _, b in rx.received]


def received_of(rx: HttpReceiver, event_type: str) -> list[tuple[dict[str, str], bytes]]:
    return [(h, b) for h, b in rx.received if orjson.loads(b)["type"] == event_type]


async def deliveries(station: StationHandle, hook_id: int, **params: Any) -> dict:
    r = await station.client.get(
        f"/api/v1/webhooks/{hook_id}/deliveries", headers=await station.owner_headers(), params=params
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_device_event_is_signed_per_standard_webhooks(
    station: StationHandle, receiver: HttpReceiver
) -> None:
    owner = await station.owner_headers()
    hook = await create_hook(station, receiver.url, description="crm")
    secret = hook["secret"]
    assert secret.startswith("whsec_") and 24 <= len(base64.b64decode(secret[6:])) <= 64
    assert hook["station_id"] == station.station_id and hook["max_concurrency"] == 2 and hook["enabled"]
    await station.create_device("sensor-1")
    await wait_for(lambda: received_of(receiver, "device.created"), message="device.created delivered")
    headers, body = received_of(receiver, "device.created")[0]

    # The official verifier accepts it; the payload is {"type","timestamp","data"}.
    payload = StandardWebhook(secret).verify(body, headers)
    assert payload["type"] == "device.created" and payload["timestamp"].endswith("Z")
    assert payload["data"]["device_id"] == "sensor-1" and payload["data"]["station_id"] == station.station_id
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"

    # By hand: HMAC-SHA256 keyed with the base64-decoded secret over "{id}.{timestamp}.{body}".
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"

    # Tampering with the body, the id or the timestamp breaks verification.
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(secret).verify(body.replace(b"sensor-1", b"sensor-2"), headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationError):
        StandardWebhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)

    # The secret is shown once: not by GET, list, or in the audit log.
    r = await station.client.get(f"/api/v1/webhooks/{hook['id']}", headers=owner)
    assert r.status_code == 200 and "secret" not in r.json() and secret not in r.text
    listed = (await station.client.get("/api/v1/webhooks", headers=owner)).json()
    assert [h["id"] for h in listed["items"]] == [hook["id"]] and secret not in str(listed)
    audit = await station.client.get("/api/v1/audit", headers=owner, params={"action": "webhook.create"})
    assert audit.json()["items"] and secret not in audit.text and secret[6:20] not in audit.text

    page = await deliveries(station, hook["id"])
    created = next(d for d in page["items"] if d["event_type"] == "device.created")
    assert created["status"] == "succeeded" and created["message_id"] == headers["webhook-id"]
    assert created["attempt_log"][0]["status_code"] == 200 and created["next_attempt_at"] is None


async def test_failed_attempts_are_retried_until_success(
    settings_factory: Any, receiver: HttpReceiver
) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        hook = await create_hook(station, receiver.url, event_types=["device.created"])
        receiver.fail_next = 2
        await station.create_device("retry-1")
        await wait_for(lambda: receiver.received, message="delivered after retries")
        assert receiver.requests == 3

        async def done() -> dict | None:
            items = (await deliveries(station, hook["id"]))["items"]
            return items[0] if items and items[0]["status"] == "succeeded" else None

        item = await wait_for(done, message="recorded as succeeded")
        assert item["attempts"] == 3
        assert [a["status_code"] for a in item["attempt_log"]] == [500, 500, 200]
        assert [a["error"] for a in item["attempt_log"]] == ["HTTP 500", "HTTP 500", None]
        assert all(a["duration_ms"] >= 0 for a in item["attempt_log"])


async def test_dead_letter_event_then_manual_redelivery(
    settings_factory: Any, receiver: HttpReceiver
) -> None:
    async with start_station(settings_factory(delivery_max_attempts=2, **FAST)) as station:
        owner = await station.owner_headers()
        failures = station.ctx.bus.subscribe(TypeFilter(["webhook.delivery_failed"]))
        hook = await create_hook(station, receiver.url, event_types=["device.created"])
        receiver.status = 503
        await station.create_device("dl-1")

        event = await asyncio.wait_for(failures.get(), 10)
        assert isinstance(event, Event)
        assert event.data["webhook_id"] == hook["id"] and event.data["event_type"] == "device.created"
        assert event.data["error"] == "HTTP 503" and event.station_id == station.station_id
        delivery_id = event.data["delivery_id"]
        r = await station.client.get(f"/api/v1/deliveries/{delivery_id}", headers=owner)
        assert r.json()["status"] == "dead_letter" and r.json()["attempts"] == 2

        # Redelivering while the endpoint is still down dead-letters again.
        r = await station.client.post(f"/api/v1/deliveries/{delivery_id}/redeliver", headers=owner)
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("pending", "dead_letter")
        second = await asyncio.wait_for(failures.get(), 10)
        assert isinstance(second, Event) and second.data["delivery_id"] == delivery_id

        receiver.status = 200
        r = await station.client.post(f"/api/v1/deliveries/{delivery_id}/redeliver", headers=owner)
        assert r.status_code == 200
        await wait_for(lambda: receiver.received, message="redelivered")
        headers, body = receiver.received[0]
        StandardWebhook(hook["secret"]).verify(body, headers)

        async def succeeded() -> dict | None:
            d = (await station.client.get(f"/api/v1/deliveries/{delivery_id}", headers=owner)).json()
            return d if d["status"] == "succeeded" else None

        done = await wait_for(succeeded, message="succeeded")
        assert done["attempts"] == 1 and done["message_id"] == headers["webhook-id"]
        assert len(done["attempt_log"]) == 5  # 2 + 2 + 1: the history is kept across redeliveries

        r = await station.client.post(f"/api/v1/deliveries/{delivery_id}/redeliver", headers=owner)
        assert (r.status_code, r.json()["code"]) == (409, "DELIVERY_NOT_REDELIVERABLE")
        r = await station.client.post("/api/v1/deliveries/999999/redeliver", headers=owner)
        assert (r.status_code, r.json()["code"]) == (404, "DELIVERY_NOT_FOUND")
        audit = await station.client.get(
            "/api/v1/audit", headers=owner, params={"action": "delivery.redeliver"}
        )
        assert len(audit.json()["items"]) == 2
        failures.close()


async def test_rotated_secret_signs_alone(station: StationHandle, receiver: HttpReceiver) -> None:
    owner = await station.owner_headers()
    hook = await create_hook(station, receiver.url, event_types=["device.created"])
    r = await station.client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret", headers=owner)
    assert r.status_code == 200, r.text
    new_secret = r.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != hook["secret"]
    await station.create_device("rot-1")
    await wait_for(lambda: receiver.received, message="delivered")
    headers, body = receiver.received[0]
    StandardWebhook(new_secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(hook["secret"]).verify(body, headers)


async def test_ping_answers_with_the_first_attempt(station: StationHandle, receiver: HttpReceiver) -> None:
    owner = await station.owner_headers()
    hook = await create_hook(station, receiver.url, enabled=False)  # pings go to disabled endpoints too
    r = await station.client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=owner)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["status"] == "succeeded" and d["event_type"] == "webhook.test" and d["attempts"] == 1
    assert d["attempt_log"][0]["status_code"] == 200
    headers, body = receiver.received[0]
    payload = StandardWebhook(hook["secret"]).verify(body, headers)
    assert payload["type"] == "webhook.test" and payload["data"]["webhook_id"] == hook["id"]

    receiver.status = 500
    r = await station.client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=owner)
    d = r.json()
    assert d["status"] == "pending" and d["attempt_log"][0]["status_code"] == 500
    assert d["last_error"] == "HTTP 500" and d["next_attempt_at"] is not None
    r = await station.client.post("/api/v1/webhooks/424242/test", headers=owner)
    assert (r.status_code, r.json()["code"]) == (404, "WEBHOOK_NOT_FOUND")


async def test_concurrency_limit_per_endpoint(settings_factory: Any, receiver: HttpReceiver) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        receiver.delay = 0.3
        hook = await create_hook(station, receiver.url, event_types=["device.created"], max_concurrency=2)
        for n in range(8):
            await station.create_device(f"conc-{n}")
        await wait_for(lambda: len(receiver.received) == 8, timeout=20, message="all 8 delivered")
        assert receiver.max_in_progress == 2  # the limit was reached and never exceeded

        r = await station.client.patch(
            f"/api/v1/webhooks/{hook['id']}",
            headers=await station.owner_headers(),
            json={"max_concurrency": 1},
        )
        assert r.status_code == 200 and r.json()["max_concurrency"] == 1
        receiver.max_in_progress = 0
        for n in range(4):
            await station.create_device(f"one-{n}")
        await wait_for(lambda: len(receiver.received) == 12, timeout=20, message="4 more delivered")
        assert receiver.max_in_progress == 1


async def test_station_scoping(station: StationHandle, receiver: HttpReceiver) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Lab B"})
    b = r.json()["id"]
    await station.user_headers("bob", "viewer")  # a viewer of the default station A
    r = await station.client.post(
        f"/api/v1/stations/{b}/members", headers=owner, json={"username": "bob", "role": "admin"}
    )
    assert r.status_code == 201
    bob = await station.user_headers("bob", "viewer")

    other = HttpReceiver()
    await other.start()
    try:
        hook_a = await create_hook(station, receiver.url)
        hook_b = await create_hook(station, other.url, headers=bob, station_id=b)
        assert hook_b["station_id"] == b

        # Bob sees only his station's endpoint; station A's answers 404 everywhere.
        listed = (await station.client.get("/api/v1/webhooks", headers=bob)).json()["items"]
        assert [h["id"] for h in listed] == [hook_b["id"]]
        for method, path in [
            ("GET", f"/api/v1/webhooks/{hook_a['id']}"),
            ("PATCH", f"/api/v1/webhooks/{hook_a['id']}"),
            ("DELETE", f"/api/v1/webhooks/{hook_a['id']}"),
            ("POST", f"/api/v1/webhooks/{hook_a['id']}/rotate-secret"),
            ("POST", f"/api/v1/webhooks/{hook_a['id']}/test"),
            ("GET", f"/api/v1/webhooks/{hook_a['id']}/deliveries"),
        ]:
            r = await station.client.request(
                method, path, headers=bob, json={} if method == "PATCH" else None
            )
            assert (r.status_code, r.json()["code"]) == (404, "WEBHOOK_NOT_FOUND"), (method, path)
        r = await station.client.post(
            "/api/v1/webhooks",
            headers=bob,
            json={"url": other.url, "event_types": ["*"], "station_id": station.station_id},
        )
        assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
        r = await station.client.post(
            "/api/v1/webhooks", headers=bob, json={"url": other.url, "event_types": ["*"], "station_id": None}
        )
        assert r.status_code == 403
        owner_list = (await station.client.get("/api/v1/webhooks", headers=owner)).json()["items"]
        assert {h["id"] for h in owner_list} == {hook_a["id"], hook_b["id"]}

        # Events follow the station: B's device reaches B's endpoint only.
        await station.create_device("dev-b", station_id=b)
        await station.create_device("dev-a")
        await wait_for(lambda: other.received and receiver.received, message="both delivered")
        await asyncio.sleep(0.3)
        assert [p["data"]["device_id"] for p in bodies(other)] == ["dev-b"]
        assert [p["data"]["device_id"] for p in bodies(receiver)] == ["dev-a"]

        # Bob cannot see A's deliveries either.
        a_delivery = (await deliveries(station, hook_a["id"]))["items"][0]["id"]
        r = await station.client.get(f"/api/v1/deliveries/{a_delivery}", headers=bob)
        assert (r.status_code, r.json()["code"]) == (404, "DELIVERY_NOT_FOUND")

        # An installation-wide endpoint gets every station's events.
        everywhere = await create_hook(station, receiver.url, station_id=None, event_types=["device.deleted"])
        assert everywhere["station_id"] is None
        assert (
            await station.client.get(f"/api/v1/webhooks/{everywhere['id']}", headers=bob)
        ).status_code == 404
        await station.client.delete("/api/v1/devices/dev-b", headers=owner)
        await wait_for(
            lambda: received_of(receiver, "device.deleted"), message="B's event at the wide endpoint"
        )
    finally:
        await other.stop()


async def test_validation(station: StationHandle) -> None:
    owner = await station.owner_headers()
    cases = [
        ({"url": "ftp://example.org/x", "event_types": ["*"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http://user:pw@127.0.0.1/x", "event_types": ["*"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http:///nohost", "event_types": ["*"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http://127.0.0.1:99999/x", "event_types": ["*"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http://127.0.0.1/x", "event_types": []}, 422, "VALIDATION_FAILED"),
        ({"url": "http://127.0.0.1/x", "event_types": ["devices.*"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http://127.0.0.1/x", "event_types": ["Device.Created"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http://127.0.0.1/x", "event_types": ["telemetry.*"]}, 422, "WEBHOOK_INVALID"),
        ({"url": "http://127.0.0.1/x", "event_types": ["*"], "station_id": "nope"}, 404, "STATION_NOT_FOUND"),
        ({"url": "http://127.0.0.1/x", "event_types": ["*"], "max_concurrency": 0}, 422, "VALIDATION_FAILED"),
        ({"url": "http://127.0.0.1/x", "event_types": ["*"], "secret": "mine"}, 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in cases:
        r = await station.client.post("/api/v1/webhooks", headers=owner, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    r = await station.client.post(
        "/api/v1/webhooks",
        headers=owner,
        json={"url": "https://127.0.0.1/x", "event_types": ["telemetry.batch", "*.created"]},
    )
    assert r.status_code == 201, r.text
    hook_id = r.json()["id"]
    r = await station.client.patch(
        f"/api/v1/webhooks/{hook_id}", headers=owner, json={"event_types": ["nope.*"]}
    )
    assert (r.status_code, r.json()["code"]) == (422, "WEBHOOK_INVALID")
    r = await station.client.patch(
        f"/api/v1/webhooks/{hook_id}", headers=owner, json={"url": "http://127.0.0.2/y", "description": "d"}
    )
    assert r.status_code == 200 and r.json()["url"] == "http://127.0.0.2/y" and r.json()["description"] == "d"
    member = await station.user_headers("mo", "member")
    assert (await station.client.get("/api/v1/webhooks", headers=member)).status_code == 403
    assert (await station.client.delete(f"/api/v1/webhooks/{hook_id}", headers=owner)).status_code == 204
    r = await station.client.get(f"/api/v1/webhooks/{hook_id}", headers=owner)
    assert (r.status_code, r.json()["code"]) == (404, "WEBHOOK_NOT_FOUND")


async def test_allowed_hosts(settings_factory: Any) -> None:
    async with start_station(
        settings_factory(delivery_allowed_hosts="hooks.example.org,*.internal")
    ) as station:
        owner = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/webhooks", headers=owner, json={"url": "http://127.0.0.1:9/x", "event_types": ["*"]}
        )
        assert (r.status_code, r.json()["code"]) == (422, "WEBHOOK_INVALID")
        assert "ALLOWED_HOSTS" in r.json()["detail"]


async def test_pagination_and_disabled_endpoints_get_nothing(
    station: StationHandle, receiver: HttpReceiver
) -> None:
    owner = await station.owner_headers()
    hook = await create_hook(station, receiver.url, event_types=["device.created"])
    for n in range(3):
        await station.create_device(f"page-{n}")
    await wait_for(lambda: len(receiver.received) == 3, message="3 delivered")
    first = await deliveries(station, hook["id"], limit=2)
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await deliveries(station, hook["id"], limit=2, cursor=first["next_cursor"])
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    ids = [d["id"] for d in first["items"] + rest["items"]]
    assert ids == sorted(ids, reverse=True)

    r = await station.client.patch(f"/api/v1/webhooks/{hook['id']}", headers=owner, json={"enabled": False})
    assert r.json()["enabled"] is False
    await station.create_device("after-disable")
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 3
    assert len((await deliveries(station, hook["id"]))["items"]) == 3


async def test_deliveries_survive_a_restart(settings_factory: Any) -> None:
    receiver = HttpReceiver()  # not started: nothing listens yet
    # A 1 s base: the station stops right after the first failure, before the backoff (4 times longer per attempt)
    # could push the next attempt past the wait below, also on a loaded machine.
    settings = settings_factory(delivery_backoff_base_seconds=1.0, delivery_poll_seconds=0.05)
    async with start_station(settings) as station:
        hook = await create_hook(station, receiver.url, event_types=["device.created"])
        await station.create_device("durable-1")

        async def failed_once() -> bool:
            items = (await deliveries(station, hook["id"]))["items"]
            return bool(items) and items[0]["attempts"] >= 1

        await wait_for(failed_once, message="a failed attempt")
    await receiver.start()
    try:
        async with start_station(settings) as station:
            await wait_for(lambda: receiver.received, timeout=30, message="delivered after the restart")
            headers, body = receiver.received[0]
            payload = StandardWebhook(hook["secret"]).verify(body, headers)
            assert payload["data"]["device_id"] == "durable-1"
    finally:
        await receiver.stop()


async def test_flow_endpoint_dead_letter_can_be_redelivered(
    settings_factory: Any, receiver: HttpReceiver
) -> None:
    receiver.status = 500
    async with start_station(settings_factory(delivery_max_attempts=2, **FAST)) as station:
        owner = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/flows",
            headers=owner,
            json={"code": "fwd", "topic": "fwd/x", "action": "POST_ENDPOINT", "endpoint_url": receiver.url},
        )
        assert r.status_code == 201, r.text
        flow_secret = r.json()["endpoint_secret"]
        await wait_for(lambda: "fwd" in station.ctx.flows.flows, message="flow active")
        async with aiomqtt.Client("127.0.0.1", station.mqtt_port) as client:
            await client.publish("fwd/x", b'{"n":1}', qos=1)

        async def dead() -> dict | None:
            items = (await station.client.get("/api/v1/flows/fwd/deliveries", headers=owner)).json()["items"]
            return items[0] if items and items[0]["status"] == "dead_letter" else None

        item = await wait_for(dead, timeout=15, message="flow delivery dead-lettered")
        # A station admin who is not an installation admin may not touch flow deliveries.
        await station.user_headers("sam", "viewer")
        r = await station.client.patch(
            f"/api/v1/stations/{station.station_id}/members/sam", headers=owner, json={"role": "admin"}
        )
        assert r.status_code == 200, r.text
        sam = await station.user_headers("sam", "viewer")
        r = await station.client.post(f"/api/v1/deliveries/{item['id']}/redeliver", headers=sam)
        assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_ROLE")
        receiver.status = 200
        r = await station.client.post(f"/api/v1/deliveries/{item['id']}/redeliver", headers=owner)
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "flow" and r.json()["webhook_id"] is None
        await wait_for(lambda: receiver.received, message="flow message redelivered")
        assert orjson.loads(receiver.received[0][1])["payload"] == {"n": 1}
        # Redelivered flow deliveries are signed with the flow's secret, like every flow attempt.
        StandardWebhook(flow_secret).verify(receiver.received[0][1], receiver.received[0][0])


async def test_queue_overflow_is_logged_and_counted(
    settings_factory: Any, receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    async with start_station(settings_factory(webhook_queue_size=100, **FAST)) as station:
        await create_hook(station, receiver.url, event_types=["device.updated"], max_concurrency=8)
        # Published in one go, with no chance for the fan-out to run in between: 150 overflow.
        for n in range(250):
            station.ctx.bus.emit("device.updated", {"device_id": f"d{n}"}, station.station_id)
        fanout = station.ctx.webhooks
        await wait_for(
            lambda: fanout.created == 100 and fanout.dropped == 150, message="100 kept, 150 dropped"
        )
        assert any("webhook queue overflowed: 150 events dropped" in r.getMessage() for r in caplog.records)
        metrics = (await station.client.get("/metrics")).text
        assert "waystation_webhook_events_dropped_total 150.0" in metrics
        assert "waystation_webhook_deliveries_created_total 100.0" in metrics
        await wait_for(lambda: len(receiver.received) == 100, timeout=20, message="the kept 100 delivered")
        # The newest were kept (drop-oldest).
        assert {p["data"]["device_id"] for p in bodies(receiver)} == {f"d{n}" for n in range(150, 250)}
