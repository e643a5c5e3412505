"""The cloud link against the fake cloud over real WebSockets: claim, auth, RPC both ways, notifications,
the offline queue and its ordered replay, and reconnecting with backoff when pings go unanswered."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from tests.cloud.support import FAST, claim, cloud_status, set_channels, wait_state
from tests.helpers import DeviceClient, StationHandle, start_station, wait_for
from waystation.cloud.fake import FakeCloud
from waystation.cloud.jsonrpc import RpcError, RpcTimeout
from waystation.cloud.models import CloudConfig
from waystation.cloud.schemas import ClaimRequest
from waystation.cloud.service import url_allowed


async def test_claim_stores_the_token_sealed_then_auth_connects(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    before = await cloud_status(linked)
    assert before["state"] == "disabled" and before["claimed"] is False
    assert before["chip_id"] and before["claim_secret"]

    station = await claim(linked, fake_cloud)
    assert station.token is not None and station.auths == 1
    async with linked.ctx.db.session() as session:
        row = await session.get(CloudConfig, 1)
        assert row is not None and row.enabled and row.claimed_at is not None
        # Sealed at rest: the token is in the row only encrypted.
        assert row.station_token_sealed and station.token not in row.station_token_sealed
        assert linked.ctx.box.open(row.station_token_sealed) == station.token

    # A reconnect authenticates with the stored token instead of claiming again.
    await fake_cloud.disconnect(station.chip_id)
    await wait_for(lambda: station.auths == 2, message="re-auth")
    assert len(fake_cloud.tokens) == 1

    r = await linked.client.get(
        "/api/v1/audit", params={"action": "cloud.claim"}, headers=await linked.owner_headers()
    )
    assert r.json()["items"][0]["actor"] == "user:owner"


async def test_status_hides_secrets_from_other_roles_and_claim_needs_the_owner(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    viewer = await linked.user_headers("vera", "viewer")
    r = await linked.client.get("/api/v1/cloud/status", headers=viewer)
    assert r.status_code == 200
    body = r.json()
    assert body["chip_id"] is None and body["claim_secret"] is None
    admin = await linked.user_headers("adam", "admin")
    assert (await linked.client.post("/api/v1/cloud/claim", headers=admin)).status_code == 403
    assert (await linked.client.post("/api/v1/cloud/unclaim", headers=admin)).status_code == 403
    r = await linked.client.get("/api/v1/cloud/status", headers=admin)
    assert r.json()["claim_secret"]


async def test_claim_without_any_cloud_url_is_refused(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with start_station(settings_factory(**FAST)) as st:
        r = await st.client.post("/api/v1/cloud/claim", headers=await st.owner_headers())
        assert r.status_code == 409 and r.json()["code"] == "CLOUD_NOT_CONFIGURED"
        r = await st.client.post(
            "/api/v1/cloud/claim", headers=await st.owner_headers(), json={"url": "http://x"}
        )
        assert r.status_code == 422


async def test_claim_with_a_url_and_registration_required(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with FakeCloud(require_registration=True) as fake, start_station(settings_factory(**FAST)) as st:
        headers = await st.owner_headers()
        status = await cloud_status(st)
        # Not registered in the cloud yet: the claim is refused, the link backs off and says why.
        r = await st.client.post("/api/v1/cloud/claim", headers=headers, json={"url": fake.url})
        assert r.status_code == 200
        await wait_for(lambda: fake.claims_refused >= 1, message="refused claim")
        status = await wait_state(st, "backoff")
        assert "refused the claim" in status["last_error"]
        fake.register(status["chip_id"], status["claim_secret"])
        status = await wait_state(st, "connected")
        assert status["claimed"] and status["url"] == fake.url


async def test_status_changes_reach_sse(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    headers = await linked.owner_headers()
    seen: list[str] = []

    async def listen() -> None:
        async with linked.client.stream(
            "GET", "/api/v1/events/stream", params={"types": "cloud.*"}, headers=headers, timeout=None
        ) as response:
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "cloud.status_changed":
                    data = orjson.loads(line.split(":", 1)[1])
                    assert "claim_secret" not in data and "stationToken" not in str(data)
                    seen.append(data["state"])

    subscribers = linked.ctx.bus.subscriber_count
    task = asyncio.create_task(listen())
    try:
        await wait_for(lambda: linked.ctx.bus.subscriber_count > subscribers, message="SSE subscribed")
        await claim(linked, fake_cloud)
        await wait_for(lambda: "connected" in seen, message="connected over SSE")
        assert seen.index("claiming") < seen.index("authenticating") < seen.index("connected")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_cloud_calls_each_station_method(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    await linked.create_device("lamp-1", "light")
    station = await claim(linked, fake_cloud)
    chip = station.chip_id

    answer = await fake_cloud.call(chip, "devices.snapshot")
    devices = answer["result"]["devices"]
    assert [d["id"] for d in devices] == ["lamp-1"]
    assert {
        "id",
        "station_id",
        "type",
        "name",
        "zone",
        "status",
        "last_seen",
        "firmware_version",
        "state",
    } <= set(devices[0])
    assert devices[0]["station_id"] == linked.station_id

    answer = await fake_cloud.call(chip, "device_types.list")
    types = {t["id"]: t for t in answer["result"]["deviceTypes"]}
    assert "set_brightness" in types["light"]["commands"]

    answer = await fake_cloud.call(
        chip,
        "device.command",
        {"deviceId": "lamp-1", "command": {"action": "set_brightness", "brightness": 40}},
    )
    assert answer["result"]["status"] == "ok"
    r = await linked.client.get("/api/v1/devices/lamp-1/commands", headers=await linked.owner_headers())
    command = r.json()["items"][0]
    assert command["action"] == "set_brightness" and command["params"] == {"brightness": 40}
    r = await linked.client.get(
        "/api/v1/audit", params={"action": "device.command"}, headers=await linked.owner_headers()
    )
    assert r.json()["items"][0]["actor"] == "cloud"

    answer = await fake_cloud.call(chip, "station.setActiveChannels", {"channels": ["device.online"]})
    assert answer["result"] == {"ok": True}
    assert (await cloud_status(linked))["active_channels"] == ["device.online"]


@pytest.mark.parametrize(
    ("method", "params", "code", "data_code"),
    [
        ("device.reboot", {}, -32601, None),
        ("device.command", {"deviceId": "lamp-1"}, -32602, None),
        ("device.command", ["lamp-1"], -32602, None),
        (
            "device.command",
            {"deviceId": "lamp-1", "command": {"action": "set_brightness", "brightness": 400}},
            -32602,
            "COMMAND_INVALID",
        ),
        ("device.command", {"deviceId": "lamp-1", "command": {"action": "fly"}}, -32602, "COMMAND_UNKNOWN"),
        ("device.command", {"deviceId": "nope", "command": {"action": "reboot"}}, -32000, "DEVICE_NOT_FOUND"),
        ("station.setActiveChannels", {"channels": ["device.teleported"]}, -32602, None),
        ("station.setActiveChannels", {"channels": "device.online"}, -32602, None),
    ],
)
async def test_bad_calls_get_json_rpc_errors(
    linked: StationHandle, fake_cloud: FakeCloud, method: str, params: Any, code: int, data_code: str | None
) -> None:
    await linked.create_device("lamp-1", "light")
    station = await claim(linked, fake_cloud)
    answer = await fake_cloud.call(station.chip_id, method, params)
    assert answer["error"]["code"] == code, answer
    if data_code:
        assert answer["error"]["data"]["code"] == data_code
    # The link survives every one of them.
    assert (await fake_cloud.call(station.chip_id, "device_types.list"))["result"]


async def test_disabled_device_is_an_application_error(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    await linked.create_device("lamp-1", "light")
    r = await linked.client.patch(
        "/api/v1/devices/lamp-1", headers=await linked.owner_headers(), json={"enabled": False}
    )
    assert r.status_code == 200
    station = await claim(linked, fake_cloud)
    answer = await fake_cloud.call(
        station.chip_id, "device.command", {"deviceId": "lamp-1", "command": {"action": "reboot"}}
    )
    assert answer["error"]["code"] == -32000 and answer["error"]["data"]["code"] == "DEVICE_DISABLED"


async def test_malformed_frames_never_kill_the_link(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    station = await claim(linked, fake_cloud)
    for raw in ("not json{", "[]", '{"jsonrpc":"2.0"}', '{"jsonrpc":"2.0","id":[1],"method":"x"}', "42"):
        await fake_cloud.send(station.chip_id, raw)
    assert (await fake_cloud.call(station.chip_id, "device_types.list"))["result"]
    assert station.auths == 1
    assert (await cloud_status(linked))["state"] == "connected"


async def test_station_calls_the_cloud(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    await claim(linked, fake_cloud)
    link = linked.ctx.cloud
    assert link is not None
    assert await link.call("cloud.echo", {"hello": 1}) == {"hello": 1}
    with pytest.raises(RpcError) as info:
        await link.call("cloud.nothing")
    assert info.value.code == -32601
    fake_cloud.silent_methods.add("cloud.slow")
    with pytest.raises(RpcTimeout):
        await link.call("cloud.slow", within=0.3)


async def test_notifications_only_for_active_channels(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    await linked.create_device("clim-1", "climate")
    station = await claim(linked, fake_cloud)
    async with DeviceClient(linked.mqtt_port, linked.station_id, "clim-1") as device:
        await device.publish("state", {"state": {"temperature": 20.0}})
        await wait_for(lambda: linked.ctx.devices and linked.ctx.devices.known["clim-1"].status == "online")
        await asyncio.sleep(0.3)  # nothing may arrive: no channel is active yet
        assert station.notifications == []

        await set_channels(fake_cloud, station.chip_id, ["device.stateChanged"])
        await device.publish("state", {"state": {"temperature": 21.5}})
        await wait_for(lambda: station.notifications, message="stateChanged")
        note = station.notifications[0]
        assert note["method"] == "device.stateChanged" and "id" not in note
        assert note["params"]["deviceId"] == "clim-1"
        assert note["params"]["stationId"] == linked.station_id
        assert note["params"]["state"]["temperature"] == 21.5
        await device.publish("event", {"event": "device_event", "data": {"action": "tapped"}})
        await asyncio.sleep(0.3)
        assert {n["method"] for n in station.notifications} == {"device.stateChanged"}
    async with linked.ctx.db.session() as session:
        row = await session.get(CloudConfig, 1)
        assert row is not None and row.active_channels == ["device.stateChanged"]


async def test_offline_queue_is_replayed_in_order_at_a_limited_rate(
    settings_factory,
    fake_cloud: FakeCloud,  # type: ignore[no-untyped-def]
) -> None:
    settings = settings_factory(
        cloud_url=fake_cloud.url, **{**FAST, "cloud_replay_rate": 20.0, "cloud_queue_size": 4}
    )
    async with start_station(settings) as st:
        await st.create_device("clim-1", "climate")
        station = await claim(st, fake_cloud)
        await set_channels(fake_cloud, station.chip_id, ["device.stateChanged"])
        await fake_cloud.stop()  # the cloud goes away
        await wait_for(
            lambda: st.ctx.cloud and st.ctx.cloud.state in ("backoff", "connecting"), message="link down"
        )
        async with DeviceClient(st.mqtt_port, st.station_id, "clim-1") as device:
            for i in range(6):
                await device.publish("state", {"state": {"temperature": float(i)}})
                await wait_for(
                    lambda i=i: (
                        st.ctx.cloud and len(st.ctx.cloud.queue) + st.ctx.cloud.queue.overflow == i + 1
                    ),
                    message=f"queued {i}",
                )
        status = await cloud_status(st)
        assert status["queue_depth"] == 4 and status["queue_overflow"] == 2  # bounded: the two oldest went
        await fake_cloud.start()  # back on the same port, with the same tokens
        await wait_for(lambda: len(station.notifications) == 4, timeout=10, message="replay")
        temperatures = [n["params"]["state"]["temperature"] for n in station.notifications]
        assert temperatures == [2.0, 3.0, 4.0, 5.0]
        span = station.notification_times[-1] - station.notification_times[0]
        assert span >= 3 / 20.0 * 0.8  # 20 per second: four take at least three intervals
        status = await wait_state(st, "connected")
        assert status["queue_depth"] == 0 and status["queue_overflow"] == 2


async def test_unanswered_pings_reconnect_with_bounded_backoff(
    settings_factory,
    fake_cloud: FakeCloud,  # type: ignore[no-untyped-def]
) -> None:
    timings = {
        "cloud_ping_interval_seconds": 0.3,
        "cloud_backoff_initial_seconds": 0.2,
        "cloud_backoff_max_seconds": 1.0,
        "cloud_backoff_jitter": 0.2,
        "cloud_rpc_timeout_seconds": 2.0,
    }
    async with start_station(settings_factory(cloud_url=fake_cloud.url, **timings)) as st:
        station = await claim(st, fake_cloud)
        fake_cloud.set_answer_pings(station.chip_id, False)
        await wait_for(
            lambda: len(station.connections) >= 6 and station.connections[4][1] is not None, timeout=20
        )
        opened_closed = station.connections[:6]
        lives = [closed - opened for opened, closed in opened_closed[:5] if closed is not None]
        gaps = [opened_closed[i + 1][0] - (opened_closed[i][1] or 0) for i in range(5)]
        # No pong by the next ping: each connection ends about two intervals after it opened.
        assert all(life < 0.3 * 2 + 0.5 for life in lives[1:]), lives
        for gap, base in zip(gaps, [0.2, 0.4, 0.8, 1.0, 1.0], strict=True):
            assert base * 0.8 - 0.05 <= gap <= base * 1.2 + 0.35, (gaps, base)
        status = await cloud_status(st)
        assert status["state"] in ("backoff", "connecting", "authenticating", "connected")

        fake_cloud.set_answer_pings(station.chip_id, True)
        await wait_state(st, "connected", timeout=5)
        count = len(station.connections)
        await asyncio.sleep(1.0)  # three ping intervals: answered pings keep the link up
        assert len(station.connections) == count and station.connected


async def test_unclaim_disconnects_and_renews_the_claim_secret(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    before = await cloud_status(linked)
    r = await linked.client.post("/api/v1/cloud/unclaim", headers=await linked.owner_headers())
    assert r.status_code == 200
    await wait_for(lambda: not station.connected, message="disconnect")
    after = await wait_state(linked, "disabled")
    assert after["claimed"] is False and after["claim_secret"] != before["claim_secret"]
    assert after["chip_id"] == before["chip_id"]
    async with linked.ctx.db.session() as session:
        row = await session.scalar(select(CloudConfig))
        assert row is not None and row.station_token_sealed is None and not row.enabled
    # Claiming again makes a new claim (the old token is forgotten).
    await claim(linked, fake_cloud)
    assert station.auths == 2


async def test_a_new_cloud_url_forgets_the_old_clouds_token(
    linked: StationHandle, fake_cloud: FakeCloud
) -> None:
    station = await claim(linked, fake_cloud)
    old_token = station.token
    async with FakeCloud() as other:
        r = await linked.client.post(
            "/api/v1/cloud/claim", headers=await linked.owner_headers(), json={"url": other.url}
        )
        assert r.status_code == 200 and r.json()["claimed"] is False
        # The live link leaves the old cloud at once, and the new one gets a claim, never the old token.
        await wait_for(lambda: not station.connected, message="left the old cloud")
        status = await wait_state(linked, "connected")
        assert status["url"] == other.url and status["claimed"] is True
        moved = other.stations[station.chip_id]
        assert moved.auths == 1 and moved.token != old_token and old_token not in other.tokens
        assert station.auths == 1
    items = (
        await linked.client.get(
            "/api/v1/audit", params={"action": "cloud.claim"}, headers=await linked.owner_headers()
        )
    ).json()["items"]
    assert "station token forgotten" in items[0]["summary"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("wss://cloud.example.com/ws/station", True),
        ("ws://127.0.0.1:8765/ws/station", True),
        ("ws://127.1.2.3:8765/ws/station", True),
        ("ws://[::1]:8765/ws/station", True),
        ("ws://localhost:8765/ws/station", True),
        ("ws://cloud.example.com/ws/station", False),
        ("ws://10.0.0.5:8765/ws/station", False),
        ("ws://127.0.0.1.example.com/ws/station", False),
        ("http://127.0.0.1/ws/station", False),
    ],
)
def test_claim_urls_need_wss_except_on_loopback(url: str, ok: bool) -> None:
    assert url_allowed(url) is ok
    if ok:
        assert ClaimRequest(url=url).url == url
    else:
        with pytest.raises(ValidationError):
            ClaimRequest(url=url)


async def test_a_plain_ws_cloud_url_off_this_machine_is_refused(linked: StationHandle) -> None:
    r = await linked.client.post(
        "/api/v1/cloud/claim", headers=await linked.owner_headers(), json={"url": "ws://cloud.example.com/ws"}
    )
    assert r.status_code == 422


async def test_the_link_checks_the_configured_url_before_it_dials(settings_factory) -> None:  # type: ignore[no-untyped-def]
    # WAYSTATION_CLOUD_URL is not checked by the claim route: the link refuses it before connecting.
    settings = settings_factory(cloud_url="ws://cloud.example.com/ws/station", **FAST)
    async with start_station(settings) as st:
        r = await st.client.post("/api/v1/cloud/claim", headers=await st.owner_headers())
        assert r.status_code == 200
        status = await wait_state(st, "backoff")
        assert "wss://" in status["last_error"]


async def test_the_link_speaks_for_its_own_station_only(linked: StationHandle, fake_cloud: FakeCloud) -> None:
    owner = await linked.owner_headers()
    other = (await linked.client.post("/api/v1/stations", headers=owner, json={"name": "B"})).json()["id"]
    await linked.create_device("clim-1", "climate")
    await linked.create_device("far-1", "climate", station_id=other)
    station = await claim(linked, fake_cloud)
    chip = station.chip_id

    snapshot = await fake_cloud.call(chip, "devices.snapshot")
    assert [d["id"] for d in snapshot["result"]["devices"]] == ["clim-1"]
    answer = await fake_cloud.call(
        chip, "device.command", {"deviceId": "far-1", "command": {"action": "reboot"}}
    )
    assert answer["error"]["code"] == -32000 and answer["error"]["data"]["code"] == "DEVICE_NOT_FOUND"
    r = await linked.client.get("/api/v1/devices/far-1/commands", headers=owner)
    assert r.json()["items"] == []

    await set_channels(fake_cloud, chip, ["device.stateChanged"])
    async with (
        DeviceClient(linked.mqtt_port, other, "far-1") as far,
        DeviceClient(linked.mqtt_port, linked.station_id, "clim-1") as near,
    ):
        await far.publish("state", {"state": {"temperature": 1.0}})
        await wait_for(
            lambda: any(
                ev.type == "device.state_changed" and ev.data.get("device_id") == "far-1"
                for ev in linked.ctx.bus.ring
            ),
            message="far-1's state on the bus",
        )
        await near.publish("state", {"state": {"temperature": 2.0}})
        await wait_for(lambda: station.notifications, message="stateChanged of clim-1")
        # Events are delivered in order: far-1's came first, so had it passed it would be here by now.
        assert [n["params"]["deviceId"] for n in station.notifications] == ["clim-1"]


async def test_the_fake_clouds_control_api_stays_on_loopback() -> None:
    async with FakeCloud(host="127.0.0.2", control_port=0) as fake:
        assert fake.url.startswith("ws://127.0.0.2:")
        assert fake.control_url.startswith("http://127.0.0.1:")
        assert fake._http is not None
        assert fake._http.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
