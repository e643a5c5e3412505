"""The MCP resources: the help text, and JSON views of the token's station."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from waystation.context import AppContext
from waystation.errors import NotFound, WaystationError
from waystation.mcp import reads
from waystation.mcp.server import current_access
from waystation.mcp.views import scrub

INSTRUCTIONS = (
    "Waystation is an IoT edge station. Read waystation://help first. Reads answer at once; every tool "
    "that changes something (commands, rules, flows, experiments, alerts) waits for a person to approve "
    "it in Waystation and answers 'pending' with a confirmation id if no one decided in time."
)

HELP = """# Waystation over MCP

You are connected to one Waystation station with an MCP token. Everything you see and do is limited
to that station.

## Read (answers at once)
- station_status: devices by status, active alerts, recent events, links, the running experiment.
- list_devices, get_device(device_id): devices, their channels, recent commands and accepted commands.
- list_channels, query_telemetry(channel, start?, end?, bucket="auto"|"1m"|"1h"|"1d"|"raw"):
  readings, bucketed (min/max/avg/count) unless you ask for raw; at most 1000 points.
- recent_events, list_flows, list_rules, list_alerts, list_experiments.
- audit: your own calls, and what people approved for you.
- Resources: waystation://status, waystation://devices, waystation://devices/{device_id},
  waystation://channels, waystation://flows, waystation://rules, waystation://protocol (the device
  protocol's payload schemas and each device type's commands).

## Change (a person approves every change)
send_command, create_rule, update_rule, disable_rule, create_flow, update_flow, disable_flow,
start_experiment, stop_experiment, acknowledge_alert.

Each needs a token with mcp:write. The station checks your arguments at once (a bad command is
refused now, not after approval) and creates a confirmation: a summary of exactly what will happen,
shown to the station's people, expiring after 10 minutes. The call waits a while for the decision:
- approved: the action ran exactly once; you get its result (status "executed").
- denied or expired: an error that says so; nothing was done.
- still undecided: status "pending" and a confirmation_id; call get_confirmation(confirmation_id,
  wait_seconds) later. Do not repeat the request: that would ask the person twice.

## Never available here
Secrets of any kind (endpoint and webhook secrets, MQTT passwords, device tokens), snapshots, users
and tokens. Do not pass secrets as arguments: such calls are refused.
"""

GetCtx = Callable[[], AppContext]


async def _json(get_ctx: GetCtx, fn: Callable[[AppContext, Any], Awaitable[dict[str, Any]]]) -> str:
    access = current_access()
    if access is None:
        raise ResourceError("TOKEN_INVALID: this read carries no MCP token.")
    try:
        return json.dumps(scrub(await fn(get_ctx(), access)), default=str)
    except NotFound as exc:
        raise ResourceNotFoundError(f"{exc.code}: {exc.detail}") from exc
    except WaystationError as exc:
        raise ResourceError(f"{exc.code}: {exc.detail}") from exc


def register(server: MCPServer[Any], get_ctx: GetCtx) -> None:
    @server.resource("waystation://help", name="help", mime_type="text/markdown")
    async def help_text() -> str:
        """What an agent can do here, and how confirmations work."""
        return HELP

    @server.resource("waystation://status", name="status", mime_type="application/json")
    async def status() -> str:
        """The station at a glance."""
        return await _json(get_ctx, reads.status)

    @server.resource("waystation://devices", name="devices", mime_type="application/json")
    async def devices() -> str:
        """The station's devices."""
        return await _json(get_ctx, lambda c, a: reads.list_devices(c, a, limit=reads.MAX_LIST))

    @server.resource("waystation://devices/{device_id}", name="device", mime_type="application/json")
    async def device(device_id: str) -> str:
        """One device with its channels and recent commands."""
        return await _json(get_ctx, lambda c, a: reads.get_device(c, a, device_id))

    @server.resource("waystation://channels", name="channels", mime_type="application/json")
    async def channels() -> str:
        """Telemetry channels with their latest values."""
        return await _json(get_ctx, reads.list_channels)

    @server.resource("waystation://flows", name="flows", mime_type="application/json")
    async def flows() -> str:
        """The station's flows (never their secrets)."""
        return await _json(get_ctx, reads.list_flows)

    @server.resource("waystation://rules", name="rules", mime_type="application/json")
    async def rules() -> str:
        """The station's rules."""
        return await _json(get_ctx, reads.list_rules)

    @server.resource("waystation://protocol", name="protocol", mime_type="application/json")
    async def protocol() -> str:
        """The device protocol's payload schemas and each device type's commands."""
        return await _json(get_ctx, lambda c, _a: reads.protocol_schemas(c))
