"""The MCP endpoint through the official SDK client over streamable HTTP: read tokens read but cannot
write, writes wait for a person and run once on approval, denial and expiry answer clearly, one
station's token sees nothing of another's, and no result ever carries a secret."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import mcp_types
import pytest
from mcp.client.context import ClientRequestContext
from mcp.shared.exceptions import MCPError

from tests.helpers import HttpReceiver, StationHandle, start_station, wait_for
from tests.mcp.support import error_text, make_token, mcp_session, result_json

RESOURCES = (
    "waystation://help",
    "waystation://status",
    "waystation://devices",
    "waystation://channels",
    "waystation://flows",
    "waystation://rules",
    "waystation://protocol",
)


async def pending(station: StationHandle, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = await station.client.get(
        "/api/v1/mcp/confirmations", headers=headers or await station.owner_headers()
    )
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def decide(
    station: StationHandle, confirmation_id: str, verb: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await station.client.post(
        f"/api/v1/mcp/confirmations/{confirmation_id}/{verb}",
        headers=headers or await station.owner_headers(),
    )


async def test_a_read_token_lists_and_reads_but_cannot_call_write_tools(station: StationHandle) -> None:
    await station.create_device("kitchen", name="Kitchen climate")
    token = await make_token(station, ["mcp:read"])
    async with mcp_session(station, token) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"list_devices", "query_telemetry", "send_command", "create_flow", "get_confirmation"} <= names
        assert not names & {"create_token", "create_user", "snapshot_export", "restore_snapshot"}
        devices = result_json(await session.call_tool("list_devices", {}))
        assert [d["id"] for d in devices["items"]] == ["kitchen"]
        device = result_json(await session.call_tool("get_device", {"device_id": "kitchen"}))
        assert device["device"]["name"] == "Kitchen climate" and "set_interval" in device["commands"]
        listed = {str(r.uri) for r in (await session.list_resources()).resources}
        assert set(RESOURCES) <= listed
        one = await session.read_resource("waystation://devices/kitchen")
        assert json.loads(one.contents[0].text)["device"]["id"] == "kitchen"
        protocol = json.loads((await session.read_resource("waystation://protocol")).contents[0].text)
        assert "command/ack" in protocol["device_to_station"]

        refused = await session.call_tool(
            "send_command", {"device_id": "kitchen", "action": "set_interval", "params": {"interval_s": 30}}
        )
        assert error_text(refused).startswith("MCP_WRITE_SCOPE_REQUIRED")
    assert await pending(station) == []

    # Every call left an audit row (actor: the token) and a count by tool and outcome.
    owner = await station.owner_headers()
    audit = (await station.client.get("/api/v1/audit", headers=owner, params={"limit": 100})).json()["items"]
    mcp_rows = [e for e in audit if e["action"] in ("mcp.tool", "mcp.resource")]
    assert {e["target"] for e in mcp_rows} >= {
        "tool:list_devices",
        "tool:send_command",
        "waystation://protocol",
    }
    assert any(e["target"] == "tool:send_command" and e["summary"].startswith("forbidden") for e in mcp_rows)
    metrics = (await station.client.get("/metrics")).text
    assert 'waystation_mcp_calls_total{outcome="forbidden",tool="send_command"} 1.0' in metrics
    assert 'waystation_mcp_calls_total{outcome="ok",tool="list_devices"} 1.0' in metrics


async def test_missing_wrong_or_revoked_tokens_get_401_with_a_reason(station: StationHandle) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"accept": "application/json, text/event-stream"}
    r = await station.client.post("/mcp", json=body, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    r = await station.client.get("/mcp", headers={"accept": "text/event-stream"})  # the SDK's GET stream
    assert r.status_code == 401 and "www-authenticate" in r.headers
    api_only = await make_token(station, ["api:read"])
    r = await station.client.post(
        "/mcp", json=body, headers={**headers, "authorization": f"Bearer {api_only}"}
    )
    assert r.status_code == 401 and "no MCP scope" in r.headers["www-authenticate"]
    # An MCP token is no key to the REST API either.
    mcp_token = await make_token(station, ["mcp:write"])
    r = await station.client.get("/api/v1/devices", headers={"authorization": f"Bearer {mcp_token}"})
    assert r.status_code == 403
    owner = await station.owner_headers()
    tokens = (await station.client.get("/api/v1/tokens", headers=owner)).json()["items"]
    token_id = next(t["id"] for t in tokens if "mcp:write" in t["scopes"])
    assert (await station.client.delete(f"/api/v1/tokens/{token_id}", headers=owner)).status_code == 204
    r = await station.client.post(
        "/mcp", json=body, headers={**headers, "authorization": f"Bearer {mcp_token}"}
    )
    assert r.status_code == 401 and "revoked" in r.json()["error_description"]


async def test_a_write_waits_for_approval_and_runs_exactly_once(settings_factory: Any) -> None:
    async with start_station(settings_factory(mcp_confirmation_wait_seconds=20)) as station:
        await station.create_device("lamp", "light")
        token = await make_token(station, ["mcp:write"])
        seq = station.ctx.bus.replay_after(0)[-1].seq if station.ctx.bus.replay_after(0) else 0
        async with mcp_session(station, token) as session:
            call = asyncio.create_task(
                session.call_tool(
                    "send_command",
                    {"device_id": "lamp", "action": "set_brightness", "params": {"brightness": 40}},
                )
            )
            waiting = await wait_for(lambda: pending(station), message="a pending confirmation")
            (conf,) = waiting
            assert conf["tool"] == "send_command" and conf["status"] == "pending"
            assert "set_brightness" in conf["summary"] and "brightness=40" in conf["summary"]
            assert conf["needed_role"] == "member"
            events = [e for e in station.ctx.bus.replay_after(seq) if e.type == "mcp.confirmation_requested"]
            assert [e.data["id"] for e in events] == [conf["id"]]
            assert not call.done()

            # Neither a viewer nor a token (not a person) may decide; the owner approves.
            viewer = await station.user_headers("vera", "viewer")
            assert (await decide(station, conf["id"], "approve", viewer)).status_code == 403
            api = await make_token(station, ["api:write"])
            r = await decide(station, conf["id"], "approve", {"authorization": f"Bearer {api}"})
            assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
            approved = await decide(station, conf["id"], "approve")
            assert approved.status_code == 200, approved.text
            assert approved.json()["status"] == "executed"
            request_id = approved.json()["result"]["request_id"]

            result = await asyncio.wait_for(call, 10)
            answer = result_json(result)
            assert answer["status"] == "executed" and answer["result"]["request_id"] == request_id
            assert answer["approved_by"] == "user:owner"

            again = await decide(station, conf["id"], "approve")
            assert again.status_code == 409 and again.json()["code"] == "MCP_CONFIRMATION_DECIDED"
            assert (await decide(station, conf["id"], "deny")).json()["code"] == "MCP_CONFIRMATION_DECIDED"

            owner = await station.owner_headers()
            commands = (await station.client.get("/api/v1/devices/lamp/commands", headers=owner)).json()[
                "items"
            ]
            assert [c["request_id"] for c in commands] == [request_id]
            own = result_json(await session.call_tool("audit", {}))
            actions = [e["action"] for e in own["items"]]
            assert "device.command" in actions and "mcp.tool" in actions
            assert any(e["actor"].startswith("user:owner via mcp:") for e in own["items"])
        assert any(e.type == "mcp.confirmation_decided" for e in station.ctx.bus.replay_after(seq))


async def test_bad_arguments_are_refused_at_once_without_a_confirmation(station: StationHandle) -> None:
    await station.create_device("lamp", "light")
    token = await make_token(station, ["mcp:write"])
    async with mcp_session(station, token) as session:
        unknown = await session.call_tool("send_command", {"device_id": "lamp", "action": "explode"})
        assert error_text(unknown).startswith("COMMAND_UNKNOWN")
        invalid = await session.call_tool(
            "send_command", {"device_id": "lamp", "action": "set_brightness", "params": {"brightness": 900}}
        )
        assert error_text(invalid).startswith("COMMAND_INVALID")
        rule = await session.call_tool("create_rule", {"rule": {"name": "x", "actions": []}})
        assert error_text(rule).startswith("VALIDATION_FAILED")
        secret_url = await session.call_tool(
            "create_flow",
            {
                "flow": {
                    "code": "f1",
                    "topic": "a/#",
                    "action": "POST_ENDPOINT",
                    "endpoint_url": "http://u:p@127.0.0.1:9/x",
                }
            },
        )
        assert error_text(secret_url).startswith("SECRETS_NOT_ACCEPTED")
    assert await pending(station) == []


async def test_denial_and_expiry_answer_clearly(settings_factory: Any) -> None:
    settings = settings_factory(mcp_confirmation_wait_seconds=20, mcp_confirmation_ttl_seconds=1.5)
    async with start_station(settings) as station:
        token = await make_token(station, ["mcp:write"])
        async with mcp_session(station, token) as session:
            call = asyncio.create_task(session.call_tool("start_experiment", {"name": "run 1"}))
            (conf,) = await wait_for(lambda: pending(station), message="a pending confirmation")
            denied = await decide(station, conf["id"], "deny")
            assert denied.status_code == 200 and denied.json()["status"] == "denied"
            text = error_text(await asyncio.wait_for(call, 10))
            assert text.startswith("DENIED: user:owner denied") and "nothing was done" in text
            owner = await station.owner_headers()
            assert (await station.client.get("/api/v1/experiments", headers=owner)).json()["items"] == []

            # Nobody decides: the call ends when the confirmation expires.
            expired = error_text(await session.call_tool("start_experiment", {"name": "run 2"}))
            assert expired.startswith("EXPIRED: no one approved") and "nothing was done" in expired
            (row,) = (
                await station.client.get(
                    "/api/v1/mcp/confirmations", headers=owner, params={"status": "expired"}
                )
            ).json()["items"]
            late = await decide(station, row["id"], "approve")
            assert late.status_code == 409 and late.json()["code"] == "MCP_CONFIRMATION_EXPIRED"
            assert (await station.client.get("/api/v1/experiments", headers=owner)).json()["items"] == []
            missing = await decide(station, "no-such-id", "approve")
            assert missing.status_code == 404 and missing.json()["code"] == "MCP_CONFIRMATION_NOT_FOUND"


async def test_an_undecided_call_answers_pending_and_the_agent_polls(settings_factory: Any) -> None:
    async with start_station(settings_factory(mcp_confirmation_wait_seconds=0)) as station:
        token = await make_token(station, ["mcp:write"])
        async with mcp_session(station, token) as session:
            answer = result_json(await session.call_tool("start_experiment", {"name": "soak test"}))
            assert answer["status"] == "pending" and "get_confirmation" in answer["message"]
            polled = result_json(
                await session.call_tool("get_confirmation", {"confirmation_id": answer["confirmation_id"]})
            )
            assert polled["status"] == "pending"
            assert (await decide(station, answer["confirmation_id"], "approve")).json()[
                "status"
            ] == "executed"
            done = result_json(
                await session.call_tool(
                    "get_confirmation", {"confirmation_id": answer["confirmation_id"], "wait_seconds": 5}
                )
            )
            assert (
                done["status"] == "executed"
                and done["result"]["name"] == "soak test"
                and done["result"]["running"]
            )


async def test_elicitation_can_withdraw_a_request_but_never_approve_it(settings_factory: Any) -> None:
    async with start_station(settings_factory(mcp_confirmation_wait_seconds=20)) as station:
        token = await make_token(station, ["mcp:write"])
        asked: list[str] = []

        async def decline(
            context: ClientRequestContext, params: mcp_types.ElicitRequestParams
        ) -> mcp_types.ElicitResult:
            asked.append(params.message)
            return mcp_types.ElicitResult(action="decline")

        async with mcp_session(station, token, elicitation_callback=decline) as session:
            text = error_text(
                await asyncio.wait_for(session.call_tool("start_experiment", {"name": "x"}), 10)
            )
            assert text.startswith("DENIED: elicitation:mcp:")
            assert asked and "Start the experiment 'x'" in asked[0]

        async def accept(
            context: ClientRequestContext, params: mcp_types.ElicitRequestParams
        ) -> mcp_types.ElicitResult:
            asked.append(params.message)
            return mcp_types.ElicitResult(action="accept", content={"keep_waiting": True})

        async with mcp_session(station, token, elicitation_callback=accept) as session:
            call = asyncio.create_task(session.call_tool("start_experiment", {"name": "y"}))
            (conf,) = await wait_for(lambda: pending(station), message="a pending confirmation")
            await wait_for(lambda: len(asked) == 2, message="the second elicitation")
            await asyncio.sleep(0.3)  # accepting in the client must not have approved anything
            assert not call.done() and (await pending(station))[0]["id"] == conf["id"]
            assert (await decide(station, conf["id"], "approve")).json()["status"] == "executed"
            assert result_json(await asyncio.wait_for(call, 10))["status"] == "executed"


async def test_a_token_of_station_a_sees_nothing_of_station_b(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Barn"})
    assert r.status_code == 201, r.text
    barn = r.json()["id"]
    await station.create_device("house-1")
    await station.create_device("barn-1", station_id=barn)
    token_a = await make_token(station, ["mcp:write"])
    token_b = await make_token(station, ["mcp:write"], station_id=barn)
    async with mcp_session(station, token_b) as session:
        call = asyncio.create_task(session.call_tool("start_experiment", {"name": "barn experiment"}))
        await wait_for(lambda: pending(station), message="station B's confirmation")
        assert [d["id"] for d in result_json(await session.call_tool("list_devices", {}))["items"]] == [
            "barn-1"
        ]
        call.cancel()
    async with mcp_session(station, token_a) as session:
        assert [d["id"] for d in result_json(await session.call_tool("list_devices", {}))["items"]] == [
            "house-1"
        ]
        status = result_json(await session.call_tool("station_status", {}))
        assert status["station_id"] == station.station_id and status["devices"]["total"] == 1
        text = json.dumps(
            [
                result_json(await session.call_tool(t, {}))
                for t in ("list_channels", "recent_events", "audit", "list_experiments")
            ]
        )
        assert "barn" not in text and barn not in text
        for uri in RESOURCES:
            content = (await session.read_resource(uri)).contents[0].text
            assert "barn-1" not in content and barn not in content
        assert error_text(await session.call_tool("get_device", {"device_id": "barn-1"})).startswith(
            "DEVICE_NOT_FOUND"
        )
        refused = await session.call_tool("send_command", {"device_id": "barn-1", "action": "reboot"})
        assert error_text(refused).startswith("DEVICE_NOT_FOUND")
        with pytest.raises(MCPError, match="DEVICE_NOT_FOUND"):
            await session.read_resource("waystation://devices/barn-1")
        (conf,) = await pending(station)
        missing = await session.call_tool("get_confirmation", {"confirmation_id": conf["id"]})
        assert error_text(missing).startswith("MCP_CONFIRMATION_NOT_FOUND")


async def test_no_tool_result_or_resource_ever_contains_a_secret(settings_factory: Any) -> None:
    async with start_station(settings_factory(mcp_confirmation_wait_seconds=20)) as station:
        owner = await station.owner_headers()
        secrets: list[str] = ["owner-password-1"]
        receiver = HttpReceiver()
        flow = await station.client.post(
            "/api/v1/flows",
            headers=owner,
            json={
                "code": "orders",
                "topic": "shop/orders",
                "action": "POST_ENDPOINT",
                "endpoint_url": receiver.url + "?key=url-secret-1",
            },
        )
        assert flow.status_code == 201, flow.text
        secrets += [flow.json()["endpoint_secret"], "url-secret-1"]
        hook = await station.client.post(
            "/api/v1/webhooks", headers=owner, json={"url": receiver.url, "event_types": ["rule.*"]}
        )
        assert hook.status_code == 201, hook.text
        secrets.append(hook.json()["secret"])
        device = await station.create_device("probe", "climate")
        secrets += [device["device_token"], device["mqtt"]["password"]]
        rule = await station.client.post(
            "/api/v1/rules",
            headers=owner,
            json={
                "name": "hot",
                "channel": "device:probe/temperature",
                "operator": "gt",
                "threshold": 30,
                "actions": [{"type": "webhook"}],
            },
        )
        assert rule.status_code == 201, rule.text
        token = await make_token(station, ["mcp:write"])
        secrets.append(token)

        seen: list[str] = []
        async with mcp_session(station, token) as session:
            # A write that makes a new secret: the approved flow's signing secret reaches no one here.
            call = asyncio.create_task(
                session.call_tool(
                    "create_flow",
                    {
                        "flow": {
                            "code": "relay",
                            "topic": "relay/#",
                            "action": "POST_ENDPOINT",
                            "endpoint_url": receiver.url,
                        }
                    },
                )
            )
            (conf,) = await wait_for(lambda: pending(station), message="the flow confirmation")
            approved = await decide(station, conf["id"], "approve")
            seen.append(approved.text)
            created = await asyncio.wait_for(call, 10)
            assert result_json(created)["result"]["has_endpoint_secret"] is True
            seen.append(created.model_dump_json())
            calls: dict[str, dict[str, Any]] = {
                "station_status": {},
                "list_devices": {},
                "get_device": {"device_id": "probe"},
                "list_channels": {},
                "query_telemetry": {"channel": "device:probe/temperature"},
                "recent_events": {},
                "list_flows": {},
                "list_rules": {},
                "list_alerts": {"status": "all"},
                "list_experiments": {},
                "audit": {"limit": 200},
                "get_confirmation": {"confirmation_id": conf["id"]},
            }
            for name, args in calls.items():
                seen.append((await session.call_tool(name, args)).model_dump_json())
            for uri in (*RESOURCES, "waystation://devices/probe"):
                seen.append((await session.read_resource(uri)).model_dump_json())
            tools = {t.name for t in (await session.list_tools()).tools}
            assert tools - set(calls) == {
                "send_command",
                "create_rule",
                "update_rule",
                "disable_rule",
                "create_flow",
                "update_flow",
                "disable_flow",
                "start_experiment",
                "stop_experiment",
                "acknowledge_alert",
            }, "a read tool is missing from this test"
        flows = result_json_text(seen, '"orders"')
        assert "url-secret-1" not in flows
        seen.append(
            (
                await station.client.get("/api/v1/mcp/confirmations", headers=owner, params={"status": "all"})
            ).text
        )
        seen.append((await station.client.get("/api/v1/audit", headers=owner, params={"limit": 500})).text)
        everything = "\n".join(seen)
        for secret in secrets:
            assert secret not in everything, f"a secret leaked: {secret[:6]}…"


def result_json_text(seen: list[str], marker: str) -> str:
    return next(s for s in seen if marker in s)


async def test_only_a_person_with_the_actions_own_role_may_approve(settings_factory: Any) -> None:
    async with start_station(settings_factory(mcp_confirmation_wait_seconds=20)) as station:
        owner = await station.owner_headers()
        member = await station.user_headers("mo", "member")
        # A station admin who is not an installation admin: flows are installation-wide.
        station_admin = await station.user_headers("sara", "member")
        r = await station.client.post(
            f"/api/v1/stations/{station.station_id}/members",
            headers=owner,
            json={"username": "sara", "role": "admin"},
        )
        assert r.status_code in (200, 201), r.text
        token = await make_token(station, ["mcp:write"])
        async with mcp_session(station, token) as session:
            rule = {
                "name": "cold",
                "channel": "device:x/t",
                "operator": "lt",
                "threshold": 5,
                "actions": [{"type": "log"}],
            }
            refused = await session.call_tool("create_rule", {"rule": rule})
            assert error_text(refused).startswith(
                "RULE_INVALID"
            )  # no such channel: refused before anyone is asked
            call = asyncio.create_task(
                session.call_tool(
                    "create_flow", {"flow": {"code": "z2m", "topic": "zigbee2mqtt/#", "action": "STORE_DB"}}
                )
            )
            (conf,) = await wait_for(lambda: pending(station), message="the flow confirmation")
            assert conf["needed_role"] == "admin"
            for headers in (member, station_admin):
                r = await decide(station, conf["id"], "approve", headers)
                assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE", r.text
            assert (await pending(station))[0]["status"] == "pending"
            assert (await decide(station, conf["id"], "approve")).json()["status"] == "executed"
            flow = result_json(await asyncio.wait_for(call, 10))["result"]
            assert flow["code"] == "z2m" and flow["enabled"] is True
            flows = result_json(await session.call_tool("list_flows", {}))["items"]
            assert [f["code"] for f in flows] == ["z2m"]
