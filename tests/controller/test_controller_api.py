"""Controllers over real HTTP and WebSocket: tokens, plugin instances and mappings, the controller socket
(ack after commit, limits, token scope), the HTTP fallback, and actuator writes reaching the plugin."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from sqlalchemy import select, update
from websockets.asyncio.client import ClientConnection, connect

from tests.controller.helpers import (
    controller_settings,
    count_rows,
    create_controller,
    running_controller,
)
from tests.helpers import StationHandle, free_port, start_station, wait_for
from waystation.controller.models import PluginInstance
from waystation.plugins.simulated import SimulatedPlugin
from waystation.secrets_box import is_sealed_json


def ws_url(station: StationHandle) -> str:
    return station.base_url.replace("http://", "ws://") + "/api/v1/ws/controller"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ask(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(orjson.dumps(message).decode())
    while True:
        answer = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if answer["type"] in ("ack", "error"):
            return dict(answer)


async def test_controller_lifecycle_tokens_and_audit(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post(
        "/api/v1/controllers", headers=owner, json={"id": "gh", "name": "Greenhouse"}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["token"]
    assert token.startswith("wsc_") and created["token_prefix"] == token[:10]
    assert created["station_id"] == station.station_id and created["connected"] is False

    r = await station.client.get("/api/v1/controllers", headers=owner)
    assert [c["id"] for c in r.json()["items"]] == ["gh"]
    assert "token" not in r.json()["items"][0]
    for bad, code in (({"id": "gh"}, "CONTROLLER_EXISTS"), ({"id": "me"}, "CONTROLLER_EXISTS")):
        r = await station.client.post("/api/v1/controllers", headers=owner, json=bad)
        assert (r.status_code, r.json()["code"]) == (409, code)
    r = await station.client.post("/api/v1/controllers", headers=owner, json={"id": "x/y"})
    assert r.status_code == 422

    viewer = await station.user_headers("cv", "viewer")
    assert (await station.client.get("/api/v1/controllers/gh", headers=viewer)).status_code == 200
    r = await station.client.post("/api/v1/controllers", headers=viewer, json={"id": "v1"})
    assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_ROLE")
    r = await station.client.get("/api/v1/controllers/gh/plugins", headers=viewer)
    assert r.status_code == 403  # plugin configs may hold device credentials

    r = await station.client.get("/api/v1/controllers/me/config", headers=auth(token))
    assert r.status_code == 200 and r.json()["controller_id"] == "gh"
    r = await station.client.get("/api/v1/controllers/me/config", headers=owner)
    assert (r.status_code, r.json()["code"]) == (401, "TOKEN_INVALID")
    # A controller token opens nothing else.
    r = await station.client.get("/api/v1/devices", headers=auth(token))
    assert r.status_code == 401

    r = await station.client.post("/api/v1/controllers/gh/token", headers=owner)
    new_token = r.json()["token"]
    assert new_token != token
    assert (await station.client.get("/api/v1/controllers/me/config", headers=auth(token))).status_code == 401
    assert (
        await station.client.get("/api/v1/controllers/me/config", headers=auth(new_token))
    ).status_code == 200

    r = await station.client.patch("/api/v1/controllers/gh", headers=owner, json={"name": "Serre"})
    assert r.json()["name"] == "Serre"
    assert (await station.client.delete("/api/v1/controllers/gh", headers=owner)).status_code == 204
    r = await station.client.get("/api/v1/controllers/gh", headers=owner)
    assert (r.status_code, r.json()["code"]) == (404, "CONTROLLER_NOT_FOUND")

    r = await station.client.get("/api/v1/audit", headers=owner, params={"limit": 50})
    actions = [e["action"] for e in r.json()["items"]]
    for action in ("controller.create", "controller.token", "controller.update", "controller.delete"):
        assert action in actions
    assert not any(token in str(e) or new_token in str(e) for e in r.json()["items"])


async def test_plugin_instances_and_mappings(station: StationHandle) -> None:
    owner = await station.owner_headers()
    token = await create_controller(station, "m1")
    base = "/api/v1/controllers/m1"
    r = await station.client.get(f"{base}/mappings", headers=owner)
    by_key = {m["key"]: m for m in r.json()["items"]}
    assert set(by_key) == {"t", "w", "heater"}
    assert by_key["heater"]["direction"] == "output" and by_key["heater"]["channel"] == "controller:m1/heater"
    assert by_key["t"]["unit"] == "°C"

    cases = [
        ({"instance": "nope", "plugin_channel": "x"}, 422, "MAPPING_INVALID"),
        ({"instance": "sim", "plugin_channel": "x", "key": "t"}, 409, "MAPPING_EXISTS"),
        ({"instance": "sim", "plugin_channel": "t", "key": "t2"}, 409, "MAPPING_EXISTS"),
        ({"instance": "sim", "plugin_channel": "x", "min": 5, "max": 1}, 422, "VALIDATION_FAILED"),
        ({"instance": "sim", "plugin_channel": "a/b"}, 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in cases:
        r = await station.client.post(f"{base}/mappings", headers=owner, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    r = await station.client.patch(
        f"{base}/mappings/{by_key['heater']['id']}", headers=owner, json={"min": 200}
    )
    assert (r.status_code, r.json()["code"]) == (422, "MAPPING_INVALID")
    r = await station.client.patch(
        f"{base}/mappings/{by_key['w']['id']}", headers=owner, json={"key": "walk", "unit": "%"}
    )
    assert r.status_code == 200 and r.json()["channel"] == "controller:m1/walk"

    r = await station.client.post(f"{base}/plugins", headers=owner, json={"name": "sim", "plugin": "system"})
    assert (r.status_code, r.json()["code"]) == (409, "PLUGIN_INSTANCE_EXISTS")
    r = await station.client.patch(
        f"{base}/plugins/sim", headers=owner, json={"interval_seconds": 2, "enabled": False}
    )
    assert r.json()["interval_seconds"] == 2 and r.json()["enabled"] is False
    r = await station.client.get(f"{base}/plugins/nope", headers=owner)
    assert (r.status_code, r.json()["code"]) == (404, "PLUGIN_INSTANCE_NOT_FOUND")

    config = (await station.client.get("/api/v1/controllers/me/config", headers=auth(token))).json()
    assert config["instances"][0]["enabled"] is False
    assert {m["key"] for m in config["mappings"]} == {"t", "walk", "heater"}
    assert config == (await station.client.get(f"{base}/config", headers=owner)).json()

    # Deleting the instance removes its mappings.
    assert (await station.client.delete(f"{base}/plugins/sim", headers=owner)).status_code == 204
    assert (await station.client.get(f"{base}/mappings", headers=owner)).json()["items"] == []
    actions = [
        e["action"] for e in (await station.client.get("/api/v1/audit", headers=owner)).json()["items"]
    ]
    for action in (
        "plugin_instance.create",
        "plugin_instance.update",
        "plugin_instance.delete",
        "channel_mapping.create",
        "channel_mapping.update",
    ):
        assert action in actions


async def test_socket_acks_only_after_the_commit_and_replays_are_not_duplicated(
    station: StationHandle,
) -> None:
    token = await create_controller(station, "ws1")
    items = [
        {"channel": "controller:ws1/t", "value": 20.0 + i, "ts": f"2026-11-22T08:00:0{i}.123456Z"}
        for i in range(5)
    ]
    async with connect(ws_url(station), additional_headers=auth(token)) as ws:
        ack = await ask(ws, {"type": "datapoints", "seq": 1, "items": items})
        assert ack == {"type": "ack", "seq": 1, "count": 5, "stored": 5, "duplicates": 0}
        # The ack came after the commit: the rows are readable at once.
        assert await count_rows(station, "controller:ws1/t") == 5
        again = await ask(ws, {"type": "datapoints", "seq": 2, "items": items})
        assert (again["count"], again["stored"], again["duplicates"]) == (5, 0, 5)
        r = await station.client.get("/api/v1/controllers/ws1", headers=await station.owner_headers())
        assert r.json()["connected"] is True and r.json()["last_connected_at"]
    assert await count_rows(station, "controller:ws1/t") == 5
    r = await station.client.get("/api/v1/channels/controller:ws1/t", headers=await station.owner_headers())
    channel = r.json()
    assert channel["station_id"] == station.station_id and channel["kind"] == "controller"
    assert channel["unit"] == "°C" and channel["last_value"] == 24.0


async def test_socket_refuses_more_than_500_items_and_foreign_channels(station: StationHandle) -> None:
    token = await create_controller(station, "ws2")
    await create_controller(station, "other")
    big = [{"channel": "controller:ws2/t", "value": 1, "ts": 1_790_000_000 + i} for i in range(501)]
    async with connect(ws_url(station), additional_headers=auth(token)) as ws:
        err = await ask(ws, {"type": "datapoints", "seq": 7, "items": big})
        assert err["type"] == "error" and err["seq"] == 7 and err["retry"] is False
        assert err["code"] == "VALIDATION_FAILED"
        assert "at most 500 items; this one has 501" in err["message"]

        for channel in ("controller:other/t", "device:ws2/t", "flow:ws2/t"):
            err = await ask(ws, {"type": "datapoints", "seq": 8, "items": [{"channel": channel, "value": 1}]})
            assert (
                err["code"] == "INSUFFICIENT_ROLE" and "its own channels (controller:ws2/" in err["message"]
            )
        err = await ask(
            ws, {"type": "datapoints", "seq": 9, "items": [{"channel": "controller:ws2/t", "value": True}]}
        )
        assert err["code"] == "VALIDATION_FAILED" and err["message"].startswith("items.0.value")
        err = await ask(ws, {"type": "nonsense", "seq": 10})
        assert err["code"] == "VALIDATION_FAILED"
        # The socket stays usable after refused messages.
        ack = await ask(ws, {"type": "datapoints", "seq": 11, "items": big[:500]})
        assert ack["type"] == "ack" and ack["count"] == 500
    assert await count_rows(station, "controller:ws2/t") == 500
    assert await count_rows(station, "controller:other/t") == 0


@pytest.mark.parametrize("token", ["wsc_not-a-real-token", "", "wst_api-token-shape"])
async def test_socket_refuses_a_wrong_token(station: StationHandle, token: str) -> None:
    headers = auth(token) if token else {}
    async with connect(ws_url(station), additional_headers=headers) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4401


async def test_http_batch_with_a_controller_token_is_scoped_to_its_channels(station: StationHandle) -> None:
    token = await create_controller(station, "h1")
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=auth(token),
        json={"items": [{"channel": "controller:h1/t", "value": 3.5, "ts": "2026-11-22T08:00:00Z"}]},
    )
    assert r.status_code == 200 and r.json() == {"received": 1, "stored": 1, "duplicates": 0}
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=auth(token),
        json={
            "items": [{"channel": "controller:h1/t", "value": 1}, {"channel": "controller:h2/t", "value": 1}]
        },
    )
    assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_ROLE")
    assert "controller:h1/" in r.json()["detail"]
    r = await station.client.post(
        "/api/v1/datapoints/batch",
        headers=auth("wsc_nope"),
        json={"items": [{"channel": "controller:h1/t", "value": 1}]},
    )
    assert (r.status_code, r.json()["code"]) == (401, "TOKEN_INVALID")
    audit = (
        await station.client.get(
            "/api/v1/audit", headers=await station.owner_headers(), params={"action": "datapoints.batch"}
        )
    ).json()
    assert audit["items"][0]["actor"] == "controller:h1"


async def test_write_route_refuses_what_it_cannot_deliver(station: StationHandle) -> None:
    await create_controller(station, "w0")
    owner = await station.owner_headers()

    async def write(channel: str, value: Any, headers: dict[str, str] = owner) -> tuple[int, str]:
        r = await station.client.post(
            f"/api/v1/channels/{channel}/write", headers=headers, json={"value": value}
        )
        return r.status_code, r.json().get("code", "")

    assert await write("controller:w0/heater", 10) == (503, "CONTROLLER_OFFLINE")
    assert await write("controller:w0/t", 10) == (409, "CHANNEL_NOT_WRITABLE")
    assert await write("device:x/t", 10) == (409, "CHANNEL_NOT_WRITABLE")
    assert await write("controller:w0/nope", 10) == (404, "CHANNEL_NOT_FOUND")
    assert await write("controller:zz/heater", 10) == (404, "CHANNEL_NOT_FOUND")
    assert await write("controller:w0/heater", 101) == (422, "VALUE_OUT_OF_RANGE")
    assert await write("controller:w0/heater", True) == (422, "VALIDATION_FAILED")
    viewer = await station.user_headers("wv", "viewer")
    assert await write("controller:w0/heater", 10, viewer) == (403, "INSUFFICIENT_ROLE")


async def test_actuator_write_reaches_the_plugin(station: StationHandle, tmp_path: Path) -> None:
    token = await create_controller(station, "act")
    owner = await station.owner_headers()
    settings = controller_settings(station.base_url, token, tmp_path / "buf")
    async with running_controller(settings) as controller:
        runner = controller.runners["sim"]
        await wait_for(lambda: runner.plugin is not None, message="plugin connected")
        plugin = runner.plugin
        assert isinstance(plugin, SimulatedPlugin)
        r = await station.client.post(
            "/api/v1/channels/controller:act/heater/write", headers=owner, json={"value": 42}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"channel": "controller:act/heater", "value": 42.0, "controller_id": "act"}
        assert plugin.writes == [("heater", 42.0)]

        async def heater_reported() -> bool:
            r = await station.client.get("/api/v1/channels/controller:act/heater", headers=owner)
            return r.status_code == 200 and r.json()["last_value"] == 42.0

        await wait_for(heater_reported, message="the written value read back")
        # The station's range is wider than the plugin's: the plugin refuses, the caller learns why.
        mapping = next(
            m
            for m in (await station.client.get("/api/v1/controllers/act/mappings", headers=owner)).json()[
                "items"
            ]
            if m["key"] == "heater"
        )
        r = await station.client.patch(
            f"/api/v1/controllers/act/mappings/{mapping['id']}", headers=owner, json={"max": 500}
        )
        assert r.status_code == 200
        await wait_for(
            lambda: controller.outputs["controller:act/heater"].max == 500, message="config pushed"
        )
        r = await station.client.post(
            "/api/v1/channels/controller:act/heater/write", headers=owner, json={"value": 300}
        )
        assert (r.status_code, r.json()["code"]) == (502, "CONTROLLER_WRITE_FAILED")
        assert "outside the range" in r.json()["detail"]

        status = await wait_for(
            lambda: station.ctx.controllers.get("act").status if station.ctx.controllers else None,  # type: ignore[union-attr]
            message="status report",
        )
        assert status["instances"]["sim"]["state"] == "running"
        assert status["instances"]["sim"]["health"]["ok"] is True
    # Stopping the controller put the output in its safe state.
    assert plugin.connected is False
    assert dict((r.channel, r.value) for r in await plugin.read())["heater"] == 0
    r = await station.client.get("/api/v1/audit", headers=owner, params={"action": "channel.write"})
    summaries = [e["summary"] for e in r.json()["items"]]
    assert "set to 42.0" in summaries and "set to 300.0: failed (CONTROLLER_WRITE_FAILED)" in summaries


async def test_config_changes_reach_a_running_controller(station: StationHandle, tmp_path: Path) -> None:
    owner = await station.owner_headers()
    token = await create_controller(
        station, "cfg", channels=[{"id": "t", "waveform": "constant", "value": 1}]
    )
    base = "/api/v1/controllers/cfg"
    settings = controller_settings(station.base_url, token, tmp_path / "buf")
    async with running_controller(settings) as controller:
        await wait_for(lambda: count_rows(station, "controller:cfg/t"), message="first readings")
        r = await station.client.post(
            f"{base}/plugins",
            headers=owner,
            json={"name": "sys", "plugin": "system", "interval_seconds": 0.05},
        )
        assert r.status_code == 201
        r = await station.client.post(
            f"{base}/mappings",
            headers=owner,
            json={"instance": "sys", "plugin_channel": "memory", "key": "mem"},
        )
        assert r.status_code == 201
        await wait_for(
            lambda: count_rows(station, "controller:cfg/mem"), message="readings of the new instance"
        )
        r = await station.client.patch(f"{base}/plugins/sim", headers=owner, json={"enabled": False})
        await wait_for(lambda: "sim" not in controller.runners, message="instance stopped")
        # An unknown plugin is reported, not fatal.
        await station.client.post(f"{base}/plugins", headers=owner, json={"name": "hw", "plugin": "no-such"})

        async def reported() -> Any:
            conn = station.ctx.controllers.get("cfg") if station.ctx.controllers else None
            instances = (conn.status or {}).get("instances", {}) if conn else {}
            return instances.get("hw")

        hw = await wait_for(reported, message="status of the unknown plugin")
        assert hw["state"] == "error" and "not installed" in hw["message"]
    r = await station.client.get("/api/v1/channels/controller:cfg/mem", headers=owner)
    assert r.json()["unit"] is None  # the mapping set none


async def test_http_fallback_when_the_websocket_is_unavailable(
    station: StationHandle, tmp_path: Path
) -> None:
    token = await create_controller(station, "fb")
    dead = free_port()

    class NoSocket(type(controller_settings(station.base_url, token, tmp_path))):  # type: ignore[misc]
        @property
        def websocket_url(self) -> str:
            return f"ws://127.0.0.1:{dead}/api/v1/ws/controller"

    settings = NoSocket(**controller_settings(station.base_url, token, tmp_path / "buf").model_dump())
    async with running_controller(settings, wait_state="http") as controller:
        await wait_for(lambda: count_rows(station, "controller:fb/t"), message="readings over HTTP")
        assert controller.link.sent > 0

        async def unit_applied() -> bool:
            r = await station.client.get(
                "/api/v1/channels/controller:fb/t", headers=await station.owner_headers()
            )
            return r.json()["unit"] == "°C"

        # The mapped unit reaches a channel created over HTTP when the controller fetches its config.
        await wait_for(unit_applied, message="the mapped unit")
    audit = (
        await station.client.get(
            "/api/v1/audit", headers=await station.owner_headers(), params={"action": "datapoints.batch"}
        )
    ).json()
    assert audit["items"][0]["actor"] == "controller:fb"


async def test_a_newer_connection_replaces_the_older_and_deleting_closes_it(station: StationHandle) -> None:
    token = await create_controller(station, "dup")
    # Entered in order: the second connection opens while the first is live.
    async with (
        connect(ws_url(station), additional_headers=auth(token)) as first,
        connect(ws_url(station), additional_headers=auth(token)) as second,
    ):
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(first.recv(), 5)
        assert first.close_code == 4409
        ack = await ask(
            second, {"type": "datapoints", "items": [{"channel": "controller:dup/t", "value": 1}]}
        )
        assert ack["count"] == 1
        r = await station.client.delete("/api/v1/controllers/dup", headers=await station.owner_headers())
        assert r.status_code == 204
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(second.recv(), 5)
        assert second.close_code == 4410


async def test_plugin_configs_are_sealed_at_rest_and_legacy_ones_get_sealed(settings_factory: Any) -> None:
    secret = "modbus-password-93f1"
    settings = settings_factory()
    async with start_station(settings) as station:
        owner = await station.owner_headers()
        token = await create_controller(station, "seal-1")
        base = "/api/v1/controllers/seal-1/plugins"
        body = {"name": "meter", "plugin": "simulated", "config": {"password": secret, "waveform": "sine"}}
        r = await station.client.post(base, headers=owner, json=body)
        assert r.status_code == 201, r.text
        assert r.json()["config"]["password"] == secret  # admins read it back in clear
        r = await station.client.patch(
            f"{base}/meter", headers=owner, json={"config": {"password": secret + "-2", "waveform": "sine"}}
        )
        assert r.status_code == 200 and r.json()["config"]["password"] == secret + "-2"
        config = (await station.client.get("/api/v1/controllers/me/config", headers=auth(token))).json()
        meter = next(i for i in config["instances"] if i["name"] == "meter")
        assert meter["config"] == {"password": secret + "-2", "waveform": "sine"}
        async with station.ctx.db.session() as session:
            stored = await session.scalar(select(PluginInstance.config).where(PluginInstance.name == "meter"))
            assert is_sealed_json(stored) and secret not in str(stored)
            # What an earlier version stored: the config in clear.
            await session.execute(
                update(PluginInstance)
                .where(PluginInstance.name == "meter")
                .values(config={"password": secret})
            )
    async with start_station(settings) as station:  # the restart seals what it finds in clear
        async with station.ctx.db.session() as session:
            stored = await session.scalar(select(PluginInstance.config).where(PluginInstance.name == "meter"))
        assert is_sealed_json(stored) and secret not in str(stored)
        assert station.ctx.box.open_json(stored) == {"password": secret}
