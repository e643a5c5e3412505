"""A webhook target and a flow endpoint down for "minutes" (time compressed with a tiny backoff base),
then back: every delivery arrives, none is dead-lettered, and flow-endpoint deliveries arrive in
message order (PROTOCOLS §6)."""

from __future__ import annotations

import logging
from typing import Any

import aiomqtt
import orjson
import pytest

from tests.helpers import HttpReceiver, StationHandle, start_station, wait_for

pytestmark = pytest.mark.timeout(90)

# Backoff is base·4^(attempt-1): 0.02, 0.08, 0.32, 1.28, 5.12 s; 12 attempts leave plenty of room.
FAST = {
    "delivery_backoff_base_seconds": 0.02,
    "delivery_poll_seconds": 0.05,
    "delivery_max_attempts": 12,
    "delivery_timeout_seconds": 2.0,
}
DEVICES = 8
FLOW_MESSAGES = 25


async def _deliveries(station: StationHandle, path: str) -> list[dict[str, Any]]:
    r = await station.client.get(path, headers=await station.owner_headers(), params={"limit": 100})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_targets_down_for_a_while_get_every_delivery_once_back_and_flows_in_order(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    receiver = HttpReceiver()  # not started: the target is down, connections are refused
    async with start_station(settings_factory(**FAST)) as station:
        owner = await station.owner_headers()
        r = await station.client.post(
            "/api/v1/webhooks", headers=owner, json={"url": receiver.url, "event_types": ["device.created"]}
        )
        assert r.status_code == 201, r.text
        hook_id = r.json()["id"]
        r = await station.client.post(
            "/api/v1/flows",
            headers=owner,
            json={"code": "out", "topic": "out/x", "action": "POST_ENDPOINT", "endpoint_url": receiver.url},
        )
        assert r.status_code == 201, r.text
        await wait_for(lambda: "out" in station.ctx.flows.flows, message="flow active")

        for i in range(DEVICES):
            await station.create_device(f"hooked-{i}", "sensor")
        async with aiomqtt.Client("127.0.0.1", station.mqtt_port) as client:
            for n in range(FLOW_MESSAGES):
                await client.publish("out/x", orjson.dumps({"n": n}), qos=1)

        async def outage_seen() -> bool:
            # The head of the flow has failed four times (about 1.7 s of refused connections, the
            # compressed "minutes"), and every webhook delivery has failed at least twice.
            flow = await _deliveries(station, "/api/v1/flows/out/deliveries")
            hooks = await _deliveries(station, f"/api/v1/webhooks/{hook_id}/deliveries")
            return (
                len(flow) == FLOW_MESSAGES
                and max(d["attempts"] for d in flow) >= 4
                and len(hooks) == DEVICES
                and min(d["attempts"] for d in hooks) >= 2
            )

        await wait_for(outage_seen, timeout=20, interval=0.1, message="repeated failed attempts")
        assert receiver.received == []
        flow = await _deliveries(station, "/api/v1/flows/out/deliveries")
        # Ordered: only the head of the flow has been tried; the rest wait behind it.
        assert sum(1 for d in flow if d["attempts"] > 0) == 1

        await receiver.start()  # the target is back
        try:

            def everything_arrived() -> bool:
                return len(receiver.received) >= DEVICES + FLOW_MESSAGES

            await wait_for(everything_arrived, timeout=30, interval=0.1, message="every delivery")
            bodies = [orjson.loads(body) for _, body in receiver.received]
            flow_bodies = [b for b in bodies if b.get("flow") == "out"]
            hook_bodies = [b for b in bodies if b.get("type") == "device.created"]
            assert [b["payload"]["n"] for b in flow_bodies] == list(range(FLOW_MESSAGES))
            assert [b["msg_id"] for b in flow_bodies] == list(range(1, FLOW_MESSAGES + 1))
            assert sorted(b["data"]["device_id"] for b in hook_bodies) == sorted(
                f"hooked-{i}" for i in range(DEVICES)
            )
            assert len(bodies) == DEVICES + FLOW_MESSAGES  # each exactly once

            async def all_succeeded() -> bool:
                rows = await _deliveries(station, "/api/v1/flows/out/deliveries")
                rows += await _deliveries(station, f"/api/v1/webhooks/{hook_id}/deliveries")
                return all(d["status"] == "succeeded" for d in rows)

            await wait_for(all_succeeded, timeout=10, message="every delivery marked succeeded")
        finally:
            await receiver.stop()
