"""POST_ENDPOINT flow deliveries signed per Standard Webhooks (PROTOCOLS §6) over real MQTT and HTTP: the
secret is shown once, verifies with the official `standardwebhooks` package, is replaced by rotation
(retries included) and never appears in GET answers or the audit log; flows without one send unsigned."""

from __future__ import annotations

import base64
from typing import Any

import aiomqtt
import orjson
import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.helpers import HttpReceiver, StationHandle, start_station, wait_for
from waystation.flows.models import Flow

FAST = {"delivery_backoff_base_seconds": 0.05, "delivery_poll_seconds": 0.05, "delivery_max_attempts": 50}


@pytest.fixture
async def receiver() -> Any:
    rx = HttpReceiver()
    await rx.start()
    yield rx
    await rx.stop()


async def publish(port: int, topic: str, payload: object) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, orjson.dumps(payload), qos=1)


def push_flow(code: str, url: str) -> dict[str, Any]:
    return {"code": code, "topic": f"signing/{code}", "action": "POST_ENDPOINT", "endpoint_url": url}


async def create_flow(station: StationHandle, body: dict[str, Any]) -> dict[str, Any]:
    r = await station.client.post("/api/v1/flows", headers=await station.owner_headers(), json=body)
    assert r.status_code == 201, r.text
    await wait_for(lambda: body["code"] in station.ctx.flows.flows, message="flow active")
    return dict(r.json())


async def send(station: StationHandle, rx: HttpReceiver, code: str, n: int) -> tuple[dict[str, str], bytes]:
    """Publish `{"n": n}` to the flow and wait for its delivery (the receiver records 2xx answers only)."""
    await publish(station.mqtt_port, f"signing/{code}", {"n": n})

    def arrived() -> tuple[dict[str, str], bytes] | None:
        return next(
            ((h, b) for h, b in rx.received if orjson.loads(b)["payload"] == {"n": n}),
            None,
        )

    return await wait_for(arrived, timeout=15, message=f"message {n} delivered")


def assert_rejected(secret: str, body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(secret).verify(body, headers)


async def test_delivery_verifies_and_the_secret_is_shown_once(
    station: StationHandle, receiver: HttpReceiver
) -> None:
    owner = await station.owner_headers()
    flow = await create_flow(station, push_flow("signed", receiver.url))
    secret = flow["endpoint_secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert flow["has_endpoint_secret"] is True

    headers, body = await send(station, receiver, "signed", 1)
    payload = StandardWebhook(secret).verify(body, headers)
    assert payload == {"flow": "signed", "msg_id": 1, "topic": "signing/signed", "payload": {"n": 1}}
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-id"].startswith("msg_")
    assert_rejected("whsec_" + base64.b64encode(b"x" * 32).decode(), body, headers)
    assert_rejected(secret, body.replace(b'"n":1', b'"n":2'), headers)

    # Never again after the create answer: not by GET, the list, or the audit log.
    r = await station.client.get("/api/v1/flows/signed", headers=owner)
    assert r.status_code == 200 and r.json()["has_endpoint_secret"] is True
    assert "endpoint_secret" not in r.json() and secret not in r.text
    r = await station.client.get("/api/v1/flows", headers=owner)
    assert r.json()["items"][0]["has_endpoint_secret"] is True and secret not in r.text
    audit = await station.client.get("/api/v1/audit", headers=owner, params={"action": "flow.create"})
    assert audit.json()["items"] and secret not in audit.text and secret[6:20] not in audit.text

    # STORE_DB flows have no secret, and rotating one is refused.
    r = await station.client.post(
        "/api/v1/flows",
        headers=owner,
        json={"code": "stored", "topic": "signing/stored", "action": "STORE_DB"},
    )
    assert r.status_code == 201 and "endpoint_secret" not in r.json()
    assert r.json()["has_endpoint_secret"] is False
    r = await station.client.post("/api/v1/flows/stored/rotate-secret", headers=owner)
    assert (r.status_code, r.json()["code"]) == (422, "FLOW_INVALID")
    r = await station.client.post("/api/v1/flows/nope/rotate-secret", headers=owner)
    assert (r.status_code, r.json()["code"]) == (404, "FLOW_NOT_FOUND")
    member = await station.user_headers("rotmember", "member")
    r = await station.client.post("/api/v1/flows/signed/rotate-secret", headers=member)
    assert r.status_code == 403


async def test_rotation_signs_retries_and_new_messages_with_the_new_secret_only(
    settings_factory: Any, receiver: HttpReceiver
) -> None:
    async with start_station(settings_factory(**FAST)) as station:
        owner = await station.owner_headers()
        old = (await create_flow(station, push_flow("rot", receiver.url)))["endpoint_secret"]
        headers, body = await send(station, receiver, "rot", 1)
        StandardWebhook(old).verify(body, headers)

        # A delivery that is failing when the secret is rotated is signed with the new one on its retry:
        # the secret is read at send time.
        receiver.status = 503
        await publish(station.mqtt_port, "signing/rot", {"n": 2})

        async def failing() -> bool:
            r = await station.client.get("/api/v1/flows/rot/deliveries", headers=owner)
            return any(d["attempts"] >= 1 and d["status"] == "pending" for d in r.json()["items"])

        await wait_for(failing, timeout=10, message="a failed attempt")
        r = await station.client.post("/api/v1/flows/rot/rotate-secret", headers=owner)
        assert r.status_code == 200, r.text
        new = r.json()["endpoint_secret"]
        assert new.startswith("whsec_") and new != old and r.json()["has_endpoint_secret"] is True
        receiver.status = 200

        for n in (2, 3):
            headers, body = await send(station, receiver, "rot", n)
            StandardWebhook(new).verify(body, headers)
            assert_rejected(old, body, headers)

        r = await station.client.get("/api/v1/flows/rot", headers=owner)
        assert "endpoint_secret" not in r.json() and new not in r.text
        audit = await station.client.get(
            "/api/v1/audit", headers=owner, params={"action": "flow.rotate_secret"}
        )
        items = audit.json()["items"]
        assert len(items) == 1 and items[0]["target"] == "flow:rot"
        assert new not in audit.text and old not in audit.text and new[6:20] not in audit.text


async def test_switching_to_post_endpoint_by_patch_makes_a_secret(
    station: StationHandle, receiver: HttpReceiver
) -> None:
    owner = await station.owner_headers()
    await create_flow(station, {"code": "switch", "topic": "signing/switch", "action": "STORE_DB"})
    r = await station.client.patch(
        "/api/v1/flows/switch",
        headers=owner,
        json={"action": "POST_ENDPOINT", "endpoint_url": receiver.url},
    )
    assert r.status_code == 200, r.text
    secret = r.json()["endpoint_secret"]
    assert secret.startswith("whsec_") and r.json()["has_endpoint_secret"] is True
    # Other changes, and naming the action it already has, neither show nor replace the secret.
    for change in ({"enabled": True}, {"action": "POST_ENDPOINT"}):
        r = await station.client.patch("/api/v1/flows/switch", headers=owner, json=change)
        assert r.status_code == 200 and "endpoint_secret" not in r.json() and secret not in r.text
    audit = await station.client.get("/api/v1/audit", headers=owner, params={"action": "flow.update"})
    assert len(audit.json()["items"]) == 3 and secret not in audit.text

    await wait_for(
        lambda: (f := station.ctx.flows.flows.get("switch")) is not None and f.action == "POST_ENDPOINT",
        message="flow reloaded as POST_ENDPOINT",
    )
    headers, body = await send(station, receiver, "switch", 1)
    StandardWebhook(secret).verify(body, headers)


async def test_flow_without_a_secret_sends_unsigned_until_one_is_rotated_in(
    station: StationHandle, receiver: HttpReceiver
) -> None:
    owner = await station.owner_headers()
    await create_flow(station, push_flow("legacy", receiver.url))
    # As a flow made before signing existed: the migration leaves its secret empty.
    async with station.ctx.db.session() as session:
        await session.execute(update(Flow).where(Flow.code == "legacy").values(endpoint_secret_sealed=None))
    r = await station.client.get("/api/v1/flows/legacy", headers=owner)
    assert r.json()["has_endpoint_secret"] is False

    headers, _ = await send(station, receiver, "legacy", 1)
    assert "webhook-signature" not in headers and headers["webhook-id"].startswith("msg_")

    r = await station.client.post("/api/v1/flows/legacy/rotate-secret", headers=owner)
    assert r.status_code == 200, r.text
    secret = r.json()["endpoint_secret"]
    headers, body = await send(station, receiver, "legacy", 2)
    assert StandardWebhook(secret).verify(body, headers)["msg_id"] == 2
