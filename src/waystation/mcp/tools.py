"""The MCP tools: reads answer at once for the token's station; every write makes a confirmation that
a person must approve, then waits (a bounded time) for the decision and its result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from waystation.context import AppContext
from waystation.errors import McpWriteScopeRequired, WaystationError
from waystation.mcp import confirmations, reads
from waystation.mcp.actions import ACTIONS
from waystation.mcp.auth import McpAccess
from waystation.mcp.confirmations import DENIED, EXECUTED, EXPIRED, FAILED
from waystation.mcp.models import McpConfirmation
from waystation.mcp.server import current_access, note_outcome
from waystation.mcp.views import redact, scrub

log = logging.getLogger(__name__)

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

GetCtx = Callable[[], AppContext]


def _access() -> McpAccess:
    access = current_access()
    if access is None:
        raise ToolError("TOKEN_INVALID: this call carries no MCP token.")
    return access


def _tool_error(exc: WaystationError) -> ToolError:
    return ToolError(f"{exc.code}: {exc.detail}")


async def _read(
    get_ctx: GetCtx, fn: Callable[[AppContext, McpAccess], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    access = _access()
    try:
        result: dict[str, Any] = scrub(await fn(get_ctx(), access))
    except WaystationError as exc:
        raise _tool_error(exc) from exc
    return result


class KeepWaiting(BaseModel):
    """The elicitation form: it can withdraw the request, never approve it."""

    keep_waiting: bool = Field(
        default=True, description="Leave the request waiting for approval in Waystation (false withdraws it)."
    )


async def _elicit(ctx: AppContext, mcp_ctx: Context, row: McpConfirmation, access: McpAccess) -> None:
    """Tell the client's user what is waiting (where the client supports elicitation). Declining here
    withdraws the request; accepting changes nothing: only a person in Waystation approves."""
    needed = ACTIONS[row.tool].needed(row.arguments)
    answer = await mcp_ctx.elicit(
        f"An agent asks Waystation to: {row.summary}\nA person with the {needed} role must approve it in "
        f"Waystation (confirmation {row.id}, expires {row.expires_at.isoformat()}). Decline to withdraw it.",
        KeepWaiting,
    )
    data = getattr(answer, "data", None)
    if answer.action != "accept" or (isinstance(data, KeepWaiting) and not data.keep_waiting):
        await confirmations.withdraw(ctx, row.id, by=f"elicitation:{access.actor}"[:120])


def _supports_elicitation(mcp_ctx: Context) -> bool:
    with contextlib.suppress(Exception):
        caps = mcp_ctx.client_capabilities
        return caps is not None and caps.elicitation is not None
    return False


def _answer(row: McpConfirmation) -> dict[str, Any]:
    """What the agent learns about its request: the result, or a clear reason nothing happened."""
    if row.status == EXECUTED:
        note_outcome("executed")
        return {
            "status": EXECUTED,
            "confirmation_id": row.id,
            "approved_by": row.decided_by,
            "result": row.result,
        }
    if row.status == FAILED:
        note_outcome("failed")
        raise ToolError(
            f"Approved by {row.decided_by}, but the action failed: {row.error} (confirmation {row.id})."
        )
    if row.status == DENIED:
        note_outcome("denied")
        raise ToolError(
            f"DENIED: {row.decided_by} denied this request; nothing was done (confirmation {row.id})."
        )
    if row.status == EXPIRED:
        note_outcome("expired")
        raise ToolError(
            f"EXPIRED: no one approved this request by {row.expires_at.isoformat()}; nothing was done "
            f"(confirmation {row.id})."
        )
    note_outcome("pending")
    return {
        "status": "pending",
        "confirmation_id": row.id,
        "summary": row.summary,
        "expires_at": row.expires_at.isoformat(),
        "message": "Waiting for a person to approve or deny this in Waystation. Nothing has happened yet. "
        f"Call get_confirmation(confirmation_id={row.id!r}) to learn the outcome.",
    }


async def _write(get_ctx: GetCtx, mcp_ctx: Context, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    access = _access()
    ctx = get_ctx()
    if not access.can_write:
        note_outcome("forbidden")
        raise _tool_error(McpWriteScopeRequired(f"{tool} changes the station; this token has only mcp:read."))
    if redact(arguments) != arguments:
        note_outcome("refused")
        raise ToolError(
            "SECRETS_NOT_ACCEPTED: these arguments carry a secret (a password, token or credentials in a "
            "URL). "
            "Secrets never pass through MCP: ask a person to set them in Waystation."
        )
    reason = confirmations.token_may(access, tool, arguments)
    if reason is not None:
        note_outcome("forbidden")
        raise ToolError(f"INSUFFICIENT_ROLE: {reason}")
    try:
        summary = await ACTIONS[tool].prepare(ctx, access.station_id, arguments)
    except WaystationError as exc:
        note_outcome("invalid")
        raise _tool_error(exc) from exc
    row = await confirmations.create(ctx, access, tool, arguments, summary)
    asking: asyncio.Task[None] | None = None
    if _supports_elicitation(mcp_ctx):
        asking = asyncio.create_task(_elicit(ctx, mcp_ctx, row, access))
    try:
        row = await confirmations.wait(ctx, row.id, ctx.settings.mcp_confirmation_wait_seconds)
    finally:
        if asking is not None:
            asking.cancel()
            with contextlib.suppress(BaseException):
                await asking
    return _answer(row)


def register(server: MCPServer[Any], get_ctx: GetCtx) -> None:
    # --- reads ------------------------------------------------------------------------------------

    @server.tool(annotations=READ)
    async def station_status() -> dict[str, Any]:
        """The station at a glance: devices by status, active alerts, recent events, links, the running
        experiment."""
        return await _read(get_ctx, reads.status)

    @server.tool(annotations=READ)
    async def list_devices(
        status: Literal["online", "offline", "unknown"] | None = None,
        type: Annotated[
            str | None, Field(max_length=64, description="a device type id, e.g. climate")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """The station's devices (id, type, name, zone, status, last_seen, firmware, state)."""
        return await _read(
            get_ctx, lambda c, a: reads.list_devices(c, a, status=status, type_id=type, limit=limit)
        )

    @server.tool(annotations=READ)
    async def get_device(device_id: Annotated[str, Field(max_length=64)]) -> dict[str, Any]:
        """One device with its channels (latest values), recent commands and the commands it accepts."""
        return await _read(get_ctx, lambda c, a: reads.get_device(c, a, device_id))

    @server.tool(annotations=READ)
    async def list_channels(device_id: Annotated[str | None, Field(max_length=64)] = None) -> dict[str, Any]:
        """Telemetry channels (device:{id}/{key}, flow:{code}/{field}) with their latest values."""
        return await _read(get_ctx, lambda c, a: reads.list_channels(c, a, device_id))

    @server.tool(annotations=READ)
    async def query_telemetry(
        channel: Annotated[str, Field(max_length=200, description="e.g. device:kitchen/temperature")],
        start: Annotated[
            datetime | None, Field(description="ISO 8601; default: 24 h (raw: 1 h) before end")
        ] = None,
        end: Annotated[datetime | None, Field(description="ISO 8601; default: now")] = None,
        bucket: Literal["auto", "1m", "1h", "1d", "raw"] = "auto",
        limit: Annotated[int, Field(ge=1, le=reads.MAX_POINTS)] = reads.MAX_POINTS,
    ) -> dict[str, Any]:
        """A channel's readings: min/max/avg/count per bucket (default, bucket size picked from the range),
        or raw points with bucket='raw'. At most 1000 points, over at most 400 days."""
        return await _read(
            get_ctx,
            lambda c, a: reads.query_telemetry(
                c, a, channel=channel, start=start, end=end, bucket=bucket, limit=limit
            ),
        )

    @server.tool(annotations=READ)
    async def recent_events(
        device_id: Annotated[str | None, Field(max_length=64)] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """The newest device events (motion, button presses…), newest first."""
        return await _read(get_ctx, lambda c, a: reads.recent_events(c, a, device_id=device_id, limit=limit))

    @server.tool(annotations=READ)
    async def list_flows() -> dict[str, Any]:
        """The station's flows (MQTT topic → schema → store or POST). Secrets are never shown."""
        return await _read(get_ctx, reads.list_flows)

    @server.tool(annotations=READ)
    async def list_rules(enabled: bool | None = None) -> dict[str, Any]:
        """The station's rules: what each watches, its condition and actions."""
        return await _read(get_ctx, lambda c, a: reads.list_rules(c, a, enabled))

    @server.tool(annotations=READ)
    async def list_alerts(status: Literal["active", "acknowledged", "all"] = "active") -> dict[str, Any]:
        """Alerts raised by rules (acknowledge one with acknowledge_alert)."""
        return await _read(get_ctx, lambda c, a: reads.list_alerts(c, a, None if status == "all" else status))

    @server.tool(annotations=READ)
    async def list_experiments() -> dict[str, Any]:
        """Experiments (named periods that tag readings), newest first."""
        return await _read(get_ctx, reads.list_experiments)

    @server.tool(annotations=READ)
    async def audit(limit: Annotated[int, Field(ge=1, le=200)] = 50) -> dict[str, Any]:
        """Your own audit trail: this token's MCP calls and the actions people approved for it."""
        return await _read(get_ctx, lambda c, a: reads.own_audit(c, a, limit))

    @server.tool(annotations=READ)
    async def get_confirmation(
        confirmation_id: Annotated[str, Field(max_length=64)],
        wait_seconds: Annotated[float, Field(ge=0, le=60)] = 0,
    ) -> dict[str, Any]:
        """The state of one of your write requests: pending, executed (with its result), failed, denied or
        expired. With wait_seconds, waits up to that long for a decision."""
        access = _access()
        ctx = get_ctx()
        try:
            row = await confirmations.wait(ctx, confirmation_id, wait_seconds)
        except WaystationError as exc:
            raise _tool_error(exc) from exc
        if row.token_id != access.token_id:
            raise ToolError(f"MCP_CONFIRMATION_NOT_FOUND: No confirmation {confirmation_id!r}.")
        out = confirmations.confirmation_out(row)
        return {
            k: out[k]
            for k in ("id", "tool", "summary", "status", "expires_at", "decided_by", "result", "error")
        }

    # --- writes (each waits for a person) -----------------------------------------------------------

    @server.tool(annotations=WRITE)
    async def send_command(
        device_id: Annotated[str, Field(max_length=64)],
        action: Annotated[str, Field(min_length=1, max_length=64, description="e.g. set_interval")],
        mcp_ctx: Context,
        params: Annotated[dict[str, Any] | None, Field(description="the command's parameters")] = None,
    ) -> dict[str, Any]:
        """Send a command to a device (see get_device for the commands it accepts). Needs a person's
        approval in Waystation; waits for it, then answers the command's state."""
        args = {"device_id": device_id, "action": action, "params": params or {}}
        return await _write(get_ctx, mcp_ctx, "send_command", args)

    @server.tool(annotations=WRITE)
    async def create_rule(
        rule: Annotated[
            dict[str, Any],
            Field(description="as POST /api/v1/rules: name, channel or event, operator, threshold, actions…"),
        ],
        mcp_ctx: Context,
    ) -> dict[str, Any]:
        """Create a rule at this station (checked now; created once a person approves)."""
        return await _write(get_ctx, mcp_ctx, "create_rule", {"rule": rule})

    @server.tool(annotations=WRITE)
    async def update_rule(
        rule_id: Annotated[int, Field(ge=1)],
        changes: Annotated[
            dict[str, Any], Field(description="the fields to change, as PATCH /api/v1/rules/{id}")
        ],
        mcp_ctx: Context,
    ) -> dict[str, Any]:
        """Change a rule (needs a person's approval)."""
        return await _write(get_ctx, mcp_ctx, "update_rule", {"rule_id": rule_id, "changes": changes})

    @server.tool(annotations=WRITE)
    async def disable_rule(rule_id: Annotated[int, Field(ge=1)], mcp_ctx: Context) -> dict[str, Any]:
        """Disable a rule so it stops firing (needs a person's approval; nothing is deleted)."""
        return await _write(get_ctx, mcp_ctx, "disable_rule", {"rule_id": rule_id})

    @server.tool(annotations=WRITE)
    async def create_flow(
        flow: Annotated[
            dict[str, Any],
            Field(description="as POST /api/v1/flows: code, topic, payload_schema, action, endpoint_url…"),
        ],
        mcp_ctx: Context,
    ) -> dict[str, Any]:
        """Create a flow at this station (needs an installation admin's approval). A POST_ENDPOINT flow's
        signing secret is never shown here."""
        return await _write(get_ctx, mcp_ctx, "create_flow", {"flow": flow})

    @server.tool(annotations=WRITE)
    async def update_flow(
        code: Annotated[str, Field(max_length=64)],
        changes: Annotated[
            dict[str, Any], Field(description="the fields to change, as PATCH /api/v1/flows/{code}")
        ],
        mcp_ctx: Context,
    ) -> dict[str, Any]:
        """Change a flow (needs an installation admin's approval)."""
        return await _write(get_ctx, mcp_ctx, "update_flow", {"code": code, "changes": changes})

    @server.tool(annotations=WRITE)
    async def disable_flow(code: Annotated[str, Field(max_length=64)], mcp_ctx: Context) -> dict[str, Any]:
        """Disable a flow so it stops taking messages (needs an installation admin's approval)."""
        return await _write(get_ctx, mcp_ctx, "disable_flow", {"code": code})

    @server.tool(annotations=WRITE)
    async def start_experiment(
        name: Annotated[str, Field(min_length=1, max_length=120)],
        mcp_ctx: Context,
        notes: Annotated[str, Field(max_length=5000)] = "",
    ) -> dict[str, Any]:
        """Start an experiment: new readings are tagged with it until it stops (needs approval)."""
        return await _write(get_ctx, mcp_ctx, "start_experiment", {"name": name, "notes": notes})

    @server.tool(annotations=WRITE)
    async def stop_experiment(experiment_id: Annotated[int, Field(ge=1)], mcp_ctx: Context) -> dict[str, Any]:
        """Stop the running experiment (needs approval)."""
        return await _write(get_ctx, mcp_ctx, "stop_experiment", {"experiment_id": experiment_id})

    @server.tool(annotations=WRITE)
    async def acknowledge_alert(alert_id: Annotated[int, Field(ge=1)], mcp_ctx: Context) -> dict[str, Any]:
        """Acknowledge an alert (needs approval)."""
        return await _write(get_ctx, mcp_ctx, "acknowledge_alert", {"alert_id": alert_id})
