"""HTTP routes for rules, their firings, alerts and the rule engine's status (docs/rules.md).

Admins of a rule's station create, change and delete it; its viewers read it and its firings. To
members of other stations a rule (or alert) answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.errors import AlertNotFound, RuleNotFound, StationNotFound
from waystation.rules import service
from waystation.rules.models import Alert, Rule
from waystation.rules.schemas import (
    AlertOut,
    AlertPage,
    FiringPage,
    RuleCreate,
    RuleOut,
    RulePage,
    RuleUpdate,
)
from waystation.security.params import MAX_ROW_ID, RowId
from waystation.station import service as stations

router = APIRouter(tags=["rules"])


async def visible_rule(
    session: AsyncSession, principal: Principal, rule_id: int, needed: str = "viewer"
) -> Rule:
    rule = await service.get_rule(session, rule_id)
    check_station(principal, rule.station_id, RuleNotFound(f"No rule {rule_id}."), needed)
    return rule


async def visible_alert(
    session: AsyncSession, principal: Principal, alert_id: int, needed: str = "viewer"
) -> Alert:
    alert = await service.get_alert(session, alert_id)
    check_station(principal, alert.station_id, AlertNotFound(f"No alert {alert_id}."), needed)
    return alert


def _summary(rule: Rule) -> str:
    watched = rule.channel or f"event {rule.event}" + (f" of {rule.device_id}" if rule.device_id else "")
    actions = ",".join(str(a.get("type")) for a in rule.actions or [])
    return f"{rule.name}: {watched} {rule.operator or 'any'} → {actions}"[:500]


@router.get("/rules", response_model=RulePage)
async def list_rules(
    station_id: str | None = Query(default=None, max_length=32),
    enabled: bool | None = Query(default=None),
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> RulePage:
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_rules(
            session,
            stations=principal.visible_stations,
            station_id=station_id,
            enabled=enabled,
            limit=limit,
            cursor=cursor,
        )
        return RulePage(items=[service.rule_out(r) for r in rows], next_cursor=next_cursor)


@router.post("/rules", response_model=RuleOut, status_code=201)
async def create_rule(
    body: RuleCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> RuleOut:
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "admin")
    async with ctx.db.session() as session:
        await stations.get_station(session, station_id)  # an installation admin may name any id
        rule = await service.create_rule(session, body, station_id)
        audit.record(
            session,
            actor=principal.actor,
            action="rule.create",
            target=f"rule:{rule.id}",
            summary=_summary(rule),
            ip=client_ip(request),
            station_id=station_id,
        )
        return service.rule_out(rule)


@router.get("/rules/{rule_id}", response_model=RuleOut)
async def get_rule(
    rule_id: RowId, principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> RuleOut:
    async with ctx.db.session() as session:
        return service.rule_out(await visible_rule(session, principal, rule_id))


@router.patch("/rules/{rule_id}", response_model=RuleOut)
async def update_rule(
    rule_id: RowId,
    body: RuleUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> RuleOut:
    async with ctx.db.session() as session:
        rule = await visible_rule(session, principal, rule_id, "admin")
        changed = await service.update_rule(session, rule, body)
        if changed:
            audit.record(
                session,
                actor=principal.actor,
                action="rule.update",
                target=f"rule:{rule.id}",
                summary=f"changed {', '.join(changed)}; now {_summary(rule)}"[:500],
                ip=client_ip(request),
                station_id=rule.station_id,
            )
        return service.rule_out(rule)


@router.delete("/rules/{rule_id}", status_code=204)
async def delete_rule(
    rule_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    async with ctx.db.session() as session:
        rule = await visible_rule(session, principal, rule_id, "admin")
        audit.record(
            session,
            actor=principal.actor,
            action="rule.delete",
            target=f"rule:{rule.id}",
            summary=_summary(rule),
            ip=client_ip(request),
            station_id=rule.station_id,
        )
        await service.delete_rule(session, rule)
    return Response(status_code=204)


@router.get("/rules/{rule_id}/firings", response_model=FiringPage)
async def list_firings(
    rule_id: RowId,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> FiringPage:
    async with ctx.db.session() as session:
        await visible_rule(session, principal, rule_id)
        rows, next_cursor = await service.list_firings(session, rule_id, limit=limit, cursor=cursor)
        return FiringPage(items=[service.firing_out(f) for f in rows], next_cursor=next_cursor)


# --- alerts -------------------------------------------------------------------------------------------


@router.get("/alerts", response_model=AlertPage)
async def list_alerts(
    status: Literal["active", "acknowledged", "all"] = Query(default="active"),
    station_id: str | None = Query(default=None, max_length=32),
    rule_id: int | None = Query(default=None, ge=1, le=MAX_ROW_ID),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> AlertPage:
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_alerts(
            session,
            stations=principal.visible_stations,
            station_id=station_id,
            status=None if status == "all" else status,
            rule_id=rule_id,
            limit=limit,
            cursor=cursor,
        )
        return AlertPage(items=[service.alert_out(a) for a in rows], next_cursor=next_cursor)


@router.get("/alerts/{alert_id}", response_model=AlertOut)
async def get_alert(
    alert_id: RowId, principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> AlertOut:
    async with ctx.db.session() as session:
        return service.alert_out(await visible_alert(session, principal, alert_id))


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut)
async def acknowledge_alert(
    alert_id: RowId,
    request: Request,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> AlertOut:
    """Acknowledge an alert (members and up). Acknowledging it again changes nothing."""
    async with ctx.db.session() as session:
        alert = await visible_alert(session, principal, alert_id, "member")
        if await service.acknowledge_alert(session, alert, principal.actor):
            audit.record(
                session,
                actor=principal.actor,
                action="alert.ack",
                target=f"alert:{alert.id}",
                summary=f"{alert.rule_name}: {alert.message}"[:500],
                ip=client_ip(request),
                station_id=alert.station_id,
            )
        return service.alert_out(alert)


# --- status -------------------------------------------------------------------------------------------


@router.get("/status/rules")
async def rules_status(
    principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """The rule engine of this worker (counters, evaluation lag) and the active alerts you can see."""
    async with ctx.db.session() as session:
        alerts = await service.count_active_alerts(session, principal.visible_stations)
    engine = ctx.rules.snapshot() if ctx.rules is not None else None
    return {
        "running": ctx.rules is not None,
        "engine": engine,
        "alerts": {"active": sum(alerts.values()), "by_severity": alerts},
    }
