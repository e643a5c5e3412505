"""The writes an agent may ask for. Each is checked when it is asked for (`prepare`, the same service
checks the REST routes run, on a transaction that is rolled back) and runs after a person approved it
(`execute`, the same service calls and audit rows as the REST routes).

Nothing here manages users, tokens, secrets or snapshots: those are never reachable through MCP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.context import AppContext
from waystation.devices import service as devices
from waystation.devices.types import validate_command
from waystation.errors import (
    AlertNotFound,
    DeviceDisabled,
    DeviceNotFound,
    ExperimentNotFound,
    FlowNotFound,
    RuleNotFound,
    ServiceUnavailable,
    Unprocessable,
)
from waystation.flows import service as flows
from waystation.flows.models import Flow
from waystation.flows.schemas import FlowCreate, FlowUpdate
from waystation.mcp.views import flow_view
from waystation.rules import service as rules
from waystation.rules.models import Rule
from waystation.rules.schemas import RuleCreate, RuleUpdate
from waystation.telemetry import service as telemetry
from waystation.telemetry.schemas import ExperimentCreate


class _DryRun(Exception):
    """Raised to roll a check-only transaction back."""


async def dry_run(ctx: AppContext, check: Callable[[AsyncSession], Awaitable[object]]) -> None:
    """Run `check` in a transaction that is always rolled back (its bus events are dropped with it), so
    an agent's request meets exactly the validation the real call will."""
    try:
        async with ctx.db.session() as session:
            await check(session)
            raise _DryRun
    except _DryRun:
        pass


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise Unprocessable(f"The arguments are not valid: {problems}") from exc


@dataclass(frozen=True)
class Execution:
    """Who runs an approved action: the approving person, on behalf of the token."""

    actor: str
    station_id: str


@dataclass(frozen=True)
class WriteAction:
    tool: str
    needed: Callable[[dict[str, Any]], str]  # the role, at the token's station, the action needs
    installation: bool  # needs an installation admin (flows are installation-wide in the REST API)
    prepare: Callable[[AppContext, str, dict[str, Any]], Awaitable[str]]  # checks; returns the summary
    execute: Callable[[AppContext, Execution, dict[str, Any]], Awaitable[dict[str, Any]]]


def _role(role: str) -> Callable[[dict[str, Any]], str]:
    return lambda _args: role


# --- devices -----------------------------------------------------------------------------------------


async def _device_at(session: AsyncSession, station_id: str, device_id: str) -> Any:
    device = await devices.get_device(session, device_id)
    if device.station_id != station_id:
        raise DeviceNotFound(f"No device {device_id!r}.")
    return device


async def _prepare_command(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    async with ctx.db.session() as session:
        device = await _device_at(session, station_id, args["device_id"])
        if not device.enabled:
            raise DeviceDisabled(f"Device {device.id!r} is disabled; enable it to send commands.")
        validate_command(await devices.get_type(session, device.type), args["action"], args["params"])
        name = device.name
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(args["params"].items())) or "no parameters"
    return f"Send the command {args['action']!r} ({params}) to device {name!r} ({args['device_id']})."


async def _execute_command(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.devices is None:
        raise ServiceUnavailable("The device runtime is not running.")
    async with ctx.db.session() as session:
        await _device_at(session, run.station_id, args["device_id"])
    cmd = await ctx.devices.submit_command(args["device_id"], args["action"], args["params"], run.actor, None)
    return devices.command_out(cmd).model_dump(mode="json")


# --- rules -------------------------------------------------------------------------------------------


async def _rule_at(session: AsyncSession, station_id: str, rule_id: int) -> Rule:
    rule = await rules.get_rule(session, rule_id)
    if rule.station_id != station_id:
        raise RuleNotFound(f"No rule {rule_id}.")
    return rule


def _rule_summary(rule: Rule) -> str:
    watched = rule.channel or f"event {rule.event}"
    actions = ", ".join(str(a.get("type")) for a in rule.actions or [])
    return f"{rule.name}: {watched} {rule.operator or 'any'} {rule.threshold} → {actions}"[:500]


def _rule_body(args: dict[str, Any]) -> RuleCreate:
    return parse(RuleCreate, {**args["rule"], "station_id": None})


async def _prepare_create_rule(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    body = _rule_body(args)
    await dry_run(ctx, lambda s: rules.create_rule(s, body, station_id))
    return f"Create the rule {body.name!r}: {args['rule']}"[:1000]


async def _execute_create_rule(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rule = await rules.create_rule(session, _rule_body(args), run.station_id)
        audit.record(
            session,
            actor=run.actor,
            action="rule.create",
            target=f"rule:{rule.id}",
            summary=_rule_summary(rule),
            station_id=run.station_id,
        )
        return rules.rule_out(rule).model_dump(mode="json")


async def _update_rule(session: AsyncSession, station_id: str, rule_id: int, body: RuleUpdate) -> Rule:
    rule = await _rule_at(session, station_id, rule_id)
    await rules.update_rule(session, rule, body)
    return rule


def _rule_changes(args: dict[str, Any]) -> RuleUpdate:
    return parse(RuleUpdate, args.get("changes") or {"enabled": False})


async def _prepare_update_rule(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    body = _rule_changes(args)
    await dry_run(ctx, lambda s: _update_rule(s, station_id, args["rule_id"], body))
    if "changes" not in args:
        return f"Disable rule {args['rule_id']} (it stops firing; nothing is deleted)."
    return f"Change rule {args['rule_id']}: {args['changes']}"[:1000]


async def _execute_update_rule(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    body = _rule_changes(args)
    async with ctx.db.session() as session:
        rule = await _update_rule(session, run.station_id, args["rule_id"], body)
        audit.record(
            session,
            actor=run.actor,
            action="rule.update",
            target=f"rule:{rule.id}",
            summary=f"changed {', '.join(sorted(body.model_fields_set))}; now {_rule_summary(rule)}"[:500],
            station_id=run.station_id,
        )
        return rules.rule_out(rule).model_dump(mode="json")


# --- flows -------------------------------------------------------------------------------------------


async def _flow_at(session: AsyncSession, station_id: str, code: str) -> Flow:
    flow = await flows.get_flow(session, code)
    if flow.station_id != station_id:
        raise FlowNotFound(f"No flow {code!r}.")
    return flow


async def _prepare_create_flow(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    body = parse(FlowCreate, args["flow"])
    await dry_run(ctx, lambda s: flows.create_flow(s, body, station_id, ctx.box))
    return f"Create the flow {body.code!r}: {body.action} on {body.topic!r}, {args['flow']}"[:1000]


async def _execute_create_flow(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    async with ctx.db.session() as session:
        # A POST_ENDPOINT flow's new signing secret is not shown to the agent: an admin rotates it
        # through the REST API to see one.
        flow, _secret = await flows.create_flow(
            session, parse(FlowCreate, args["flow"]), run.station_id, ctx.box
        )
        audit.record(
            session,
            actor=run.actor,
            action="flow.create",
            target=f"flow:{flow.code}",
            summary=f"{flow.action} on {flow.topic}",
            station_id=run.station_id,
        )
        return flow_view(flow)


def _flow_changes(args: dict[str, Any]) -> FlowUpdate:
    return parse(FlowUpdate, args.get("changes") or {"enabled": False})


async def _update_flow(
    ctx: AppContext, session: AsyncSession, station_id: str, code: str, body: FlowUpdate
) -> Flow:
    await _flow_at(session, station_id, code)
    flow, _secret = await flows.update_flow(session, code, body, ctx.box)
    return flow


async def _prepare_update_flow(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    body = _flow_changes(args)
    await dry_run(ctx, lambda s: _update_flow(ctx, s, station_id, args["code"], body))
    if "changes" not in args:
        return f"Disable the flow {args['code']!r} (it stops taking messages; nothing is deleted)."
    return f"Change the flow {args['code']!r}: {args['changes']}"[:1000]


async def _execute_update_flow(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    body = _flow_changes(args)
    async with ctx.db.session() as session:
        flow = await _update_flow(ctx, session, run.station_id, args["code"], body)
        audit.record(
            session,
            actor=run.actor,
            action="flow.update",
            target=f"flow:{flow.code}",
            summary=f"changed {', '.join(sorted(body.model_fields_set)) or 'nothing'}",
            station_id=run.station_id,
        )
        return flow_view(flow)


# --- experiments and alerts ---------------------------------------------------------------------------


async def _prepare_start_experiment(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    body = parse(ExperimentCreate, {"name": args["name"], "notes": args.get("notes", "")})
    await dry_run(
        ctx,
        lambda s: telemetry.start_experiment(
            s, station_id=station_id, name=body.name, notes=body.notes, actor="-"
        ),
    )
    return f"Start the experiment {body.name!r} (new readings are tagged with it until it is stopped)."


async def _execute_start_experiment(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.ingest is None:
        raise ServiceUnavailable("The ingest pipeline is not running.")
    body = parse(ExperimentCreate, {"name": args["name"], "notes": args.get("notes", "")})
    async with ctx.db.session() as session:
        exp = await telemetry.start_experiment(
            session, station_id=run.station_id, name=body.name, notes=body.notes, actor=run.actor
        )
        audit.record(
            session,
            actor=run.actor,
            action="experiment.start",
            target=f"experiment:{exp.id}",
            summary=f"started {body.name!r}",
            station_id=run.station_id,
        )
    ctx.ingest.active_experiments[run.station_id] = exp.id
    return telemetry.experiment_out(exp).model_dump(mode="json")


async def _stop_experiment(session: AsyncSession, station_id: str, experiment_id: int) -> Any:
    exp = await telemetry.get_experiment(session, experiment_id)
    if exp.station_id != station_id:
        raise ExperimentNotFound(f"No experiment {experiment_id}.")
    return await telemetry.stop_experiment(session, experiment_id)


async def _prepare_stop_experiment(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    await dry_run(ctx, lambda s: _stop_experiment(s, station_id, args["experiment_id"]))
    return f"Stop experiment {args['experiment_id']}."


async def _execute_stop_experiment(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    async with ctx.db.session() as session:
        exp = await _stop_experiment(session, run.station_id, args["experiment_id"])
        audit.record(
            session,
            actor=run.actor,
            action="experiment.stop",
            target=f"experiment:{exp.id}",
            summary=f"stopped {exp.name!r}",
            station_id=run.station_id,
        )
    if ctx.ingest is not None and ctx.ingest.active_experiments.get(exp.station_id) == exp.id:
        del ctx.ingest.active_experiments[exp.station_id]
    return telemetry.experiment_out(exp).model_dump(mode="json")


async def _alert_at(session: AsyncSession, station_id: str, alert_id: int) -> Any:
    alert = await rules.get_alert(session, alert_id)
    if alert.station_id != station_id:
        raise AlertNotFound(f"No alert {alert_id}.")
    return alert


async def _prepare_ack(ctx: AppContext, station_id: str, args: dict[str, Any]) -> str:
    async with ctx.db.session() as session:
        alert = await _alert_at(session, station_id, args["alert_id"])
        return f"Acknowledge alert {alert.id} ({alert.rule_name}: {alert.message})."[:500]


async def _execute_ack(ctx: AppContext, run: Execution, args: dict[str, Any]) -> dict[str, Any]:
    async with ctx.db.session() as session:
        alert = await _alert_at(session, run.station_id, args["alert_id"])
        if await rules.acknowledge_alert(session, alert, run.actor):
            audit.record(
                session,
                actor=run.actor,
                action="alert.ack",
                target=f"alert:{alert.id}",
                summary=f"{alert.rule_name}: {alert.message}"[:500],
                station_id=run.station_id,
            )
        return rules.alert_out(alert).model_dump(mode="json")


ACTIONS: dict[str, WriteAction] = {
    a.tool: a
    for a in (
        WriteAction(
            "send_command",
            lambda args: "admin" if args.get("action") == "ota_update" else "member",
            False,
            _prepare_command,
            _execute_command,
        ),
        WriteAction("create_rule", _role("admin"), False, _prepare_create_rule, _execute_create_rule),
        WriteAction("update_rule", _role("admin"), False, _prepare_update_rule, _execute_update_rule),
        WriteAction("disable_rule", _role("admin"), False, _prepare_update_rule, _execute_update_rule),
        WriteAction("create_flow", _role("admin"), True, _prepare_create_flow, _execute_create_flow),
        WriteAction("update_flow", _role("admin"), True, _prepare_update_flow, _execute_update_flow),
        WriteAction("disable_flow", _role("admin"), True, _prepare_update_flow, _execute_update_flow),
        WriteAction(
            "start_experiment", _role("member"), False, _prepare_start_experiment, _execute_start_experiment
        ),
        WriteAction(
            "stop_experiment", _role("member"), False, _prepare_stop_experiment, _execute_stop_experiment
        ),
        WriteAction("acknowledge_alert", _role("member"), False, _prepare_ack, _execute_ack),
    )
}
