"""Rules, firings and alerts: definitions and their checks, the atomic cooldown claim, queries.

Every change to a rule queues a `rule.changed` bus event that goes out when its unit of work commits;
the rule engine reloads the rule on it.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.controller import service as controllers
from waystation.db import emit, utcnow
from waystation.devices import service as devices
from waystation.devices.types import validate_command
from waystation.errors import (
    AlertNotFound,
    BadRequest,
    ChannelNotFound,
    CommandInvalid,
    CommandUnknown,
    DeviceNotFound,
    FlowNotFound,
    RuleInvalid,
    RuleNotFound,
)
from waystation.flows import service as flows
from waystation.rules.engine import RANGE_OPERATORS
from waystation.rules.models import Alert, Rule, RuleFiring
from waystation.rules.schemas import AlertOut, FiringOut, RuleCreate, RuleOut, RuleUpdate
from waystation.security.params import MAX_ROW_ID
from waystation.telemetry import service as telemetry

CHANGED_EVENT = "rule.changed"
FIRED_EVENT = "rule.fired"
ALERT_RAISED = "alert.raised"
ALERT_ACKNOWLEDGED = "alert.acknowledged"

#: The fields a definition is made of (what `check_definition` looks at, and PATCH may change).
DEFINITION_FIELDS = (
    "name",
    "description",
    "enabled",
    "channel",
    "event",
    "device_id",
    "operator",
    "threshold",
    "threshold_high",
    "for_seconds",
    "cooldown_seconds",
    "actions",
)


# --- cursors --------------------------------------------------------------------------------------


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(str(row_id).encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        row_id = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.") from exc
    # Only what we hand out; beyond the id column's range the database driver would fail (a 500).
    if not 0 <= row_id <= MAX_ROW_ID or encode_cursor(row_id) != cursor:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.")
    return row_id


# --- output ---------------------------------------------------------------------------------------


def rule_out(rule: Rule) -> RuleOut:
    return RuleOut(
        id=rule.id,
        station_id=rule.station_id,
        name=rule.name,
        description=rule.description,
        enabled=rule.enabled,
        channel=rule.channel,
        event=rule.event,
        device_id=rule.device_id,
        operator=rule.operator,
        threshold=rule.threshold,
        threshold_high=rule.threshold_high,
        for_seconds=rule.for_seconds,
        cooldown_seconds=rule.cooldown_seconds,
        actions=list(rule.actions or []),
        last_fired_at=rule.last_fired_at,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


def firing_out(firing: RuleFiring) -> FiringOut:
    return FiringOut(
        id=firing.id,
        rule_id=firing.rule_id,
        ts=firing.ts,
        reading_ts=firing.reading_ts,
        value=firing.value,
        channel=firing.channel,
        device_id=firing.device_id,
        status=firing.status,
        outcomes=list(firing.outcomes or []),
    )


def alert_out(alert: Alert) -> AlertOut:
    return AlertOut(
        id=alert.id,
        station_id=alert.station_id,
        rule_id=alert.rule_id,
        rule_name=alert.rule_name,
        severity=alert.severity,
        message=alert.message,
        value=alert.value,
        channel=alert.channel,
        device_id=alert.device_id,
        status=alert.status,
        count=alert.count,
        raised_at=alert.raised_at,
        last_raised_at=alert.last_raised_at,
        acknowledged_at=alert.acknowledged_at,
        acknowledged_by=alert.acknowledged_by,
    )


# --- checking a definition ----------------------------------------------------------------------------


def _invalid(loc: list[str | int], msg: str) -> RuleInvalid:
    return RuleInvalid(msg, errors=[{"loc": ["body", *loc], "msg": msg}])


def check_shape(d: dict[str, Any]) -> None:
    """The fields fit together: a channel or an event, the thresholds the operator needs."""
    channel, event, operator = d.get("channel"), d.get("event"), d.get("operator")
    threshold, high = d.get("threshold"), d.get("threshold_high")
    if (channel is None) == (event is None):
        raise _invalid(["channel"], "A rule watches either a 'channel' or a device 'event' (exactly one).")
    if channel is not None:
        if d.get("device_id") is not None:
            raise _invalid(
                ["device_id"], "'device_id' is for event rules; a channel already names its device."
            )
        if operator is None:
            raise _invalid(["operator"], "A channel rule needs an 'operator'.")
    else:
        if float(d.get("for_seconds") or 0) > 0:
            raise _invalid(["for_seconds"], "'for_seconds' needs a channel: an event has no duration.")
        if operator is None and (threshold is not None or high is not None):
            raise _invalid(["operator"], "A threshold needs an 'operator' to compare the event's data.value.")
    if operator is None:
        return
    if threshold is None:
        raise _invalid(["threshold"], f"The operator {operator!r} needs a 'threshold'.")
    if operator in RANGE_OPERATORS:
        if high is None:
            raise _invalid(["threshold_high"], f"The operator {operator!r} needs 'threshold_high'.")
        if high < threshold:
            raise _invalid(["threshold_high"], "'threshold_high' must not be below 'threshold'.")
    elif high is not None:
        raise _invalid(
            ["threshold_high"], f"'threshold_high' is only for between and not_between, not {operator!r}."
        )


async def device_at(session: AsyncSession, station_id: str, device_id: str) -> Any:
    """The device if it belongs to the station; None otherwise (absent and elsewhere look the same)."""
    try:
        device = await devices.get_device(session, device_id)
    except DeviceNotFound:
        return None
    return device if device.station_id == station_id else None


async def _channel_at(session: AsyncSession, station_id: str, channel_id: str) -> bool:
    """A channel of the station, or one that a device or flow of the station will create with its first
    reading (channels appear with their first datapoint, and rules are often written before that)."""
    try:
        channel = await telemetry.get_channel(session, channel_id)
    except ChannelNotFound:
        kind, _, rest = channel_id.partition(":")
        source = rest.split("/", 1)[0]
        if kind == "device":
            return await device_at(session, station_id, source) is not None
        if kind == "flow":
            try:
                return (await flows.get_flow(session, source)).station_id == station_id
            except FlowNotFound:
                return False
        if kind == "controller":
            return await controllers.controller_at(session, station_id, source)
        return False
    return channel.station_id == station_id


async def check_definition(
    session: AsyncSession, station_id: str, d: dict[str, Any], before: dict[str, Any] | None = None
) -> None:
    """Everything a rule names must exist at its station, and every command must be valid for its
    device's type (checked again at each firing: devices and types change). With `before` (a PATCH),
    only what changed is looked up again, so a rule whose device has gone can still be renamed,
    paused or repaired."""
    check_shape(d)
    before = before or {}
    channel: str | None = d.get("channel")
    device_id: str | None = d.get("device_id")
    new_channel = channel if channel is not None and channel != before.get("channel") else None
    if new_channel is not None and not await _channel_at(session, station_id, new_channel):
        raise _invalid(["channel"], f"channel {channel!r}: no such channel, device or flow at this station.")
    new_device = device_id if device_id is not None and device_id != before.get("device_id") else None
    if new_device is not None and await device_at(session, station_id, new_device) is None:
        raise _invalid(["device_id"], f"device_id {device_id!r}: no such device at this station.")
    unchanged = [a for a in before.get("actions") or [] if a.get("type") == "command"]
    for i, action in enumerate(d.get("actions") or []):
        if action.get("type") != "command" or action in unchanged:
            continue
        target = action["device_id"]
        device = await device_at(session, station_id, target)
        if device is None:
            raise _invalid(
                ["actions", i, "device_id"], f"actions[{i}]: no device {target!r} at this station."
            )
        try:
            validate_command(await devices.get_type(session, device.type), action["action"], action["params"])
        except (CommandUnknown, CommandInvalid) as exc:
            raise _invalid(["actions", i], f"actions[{i}]: {exc.detail}") from exc


# --- rules --------------------------------------------------------------------------------------------


async def create_rule(session: AsyncSession, body: RuleCreate, station_id: str) -> Rule:
    d = body.model_dump(mode="json", exclude={"station_id"})
    await check_definition(session, station_id, d)
    now = utcnow()
    rule = Rule(station_id=station_id, created_at=now, updated_at=now, last_fired_at=None, **d)
    session.add(rule)
    await session.flush()
    emit(session, CHANGED_EVENT, {"rule_id": rule.id, "change": "created"}, station_id)
    return rule


async def get_rule(session: AsyncSession, rule_id: int) -> Rule:
    rule = await session.get(Rule, rule_id)
    if rule is None:
        raise RuleNotFound(f"No rule {rule_id}.")
    return rule


async def list_rules(
    session: AsyncSession,
    *,
    stations: Collection[str] | None,
    station_id: str | None = None,
    enabled: bool | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[Sequence[Rule], str | None]:
    """Rules in id order; `stations` None means every station's."""
    query = select(Rule).order_by(Rule.id).limit(limit + 1)
    if stations is not None:
        query = query.where(Rule.station_id.in_(list(stations)))
    if station_id:
        query = query.where(Rule.station_id == station_id)
    if enabled is not None:
        query = query.where(Rule.enabled.is_(enabled))
    if cursor:
        query = query.where(Rule.id > decode_cursor(cursor))
    rows = list((await session.scalars(query)).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def update_rule(session: AsyncSession, rule: Rule, body: RuleUpdate) -> list[str]:
    """Apply the fields sent; the merged definition is checked as a whole. Returns the fields changed."""
    sent = body.model_dump(mode="json", include=body.model_fields_set)
    merged = {name: getattr(rule, name) for name in DEFINITION_FIELDS}
    merged.update(sent)
    for name in ("name", "description", "enabled", "for_seconds", "cooldown_seconds", "actions"):
        if merged[name] is None:  # not nullable: `null` means "leave it"
            merged[name] = getattr(rule, name)
    before = {name: getattr(rule, name) for name in DEFINITION_FIELDS}
    await check_definition(session, rule.station_id, merged, before)
    changed = [name for name in DEFINITION_FIELDS if merged[name] != getattr(rule, name)]
    for name in changed:
        setattr(rule, name, merged[name])
    if changed:
        rule.updated_at = utcnow()
        emit(session, CHANGED_EVENT, {"rule_id": rule.id, "change": "updated"}, rule.station_id)
    return changed


async def delete_rule(session: AsyncSession, rule: Rule) -> None:
    await session.delete(rule)
    emit(session, CHANGED_EVENT, {"rule_id": rule.id, "change": "deleted"}, rule.station_id)


# --- firings ------------------------------------------------------------------------------------------


async def claim_firing(session: AsyncSession, rule_id: int, now: datetime, cooldown_seconds: float) -> bool:
    """The atomic cooldown check-and-set: take the firing slot at `now` if the rule is enabled and its
    last firing is at least `cooldown_seconds` old. One conditional UPDATE, so of several concurrent
    claims (tasks, workers) exactly one wins: on PostgreSQL the losers wait for the row lock and then
    see the new `last_fired_at`; SQLite has one writer at a time."""
    cutoff = now - timedelta(seconds=cooldown_seconds)
    result = await session.execute(
        update(Rule)
        .where(
            Rule.id == rule_id,
            Rule.enabled.is_(True),
            or_(Rule.last_fired_at.is_(None), Rule.last_fired_at <= cutoff),
        )
        .values(last_fired_at=now)
        .returning(Rule.id)
        .execution_options(synchronize_session=False)
    )
    return result.scalar() is not None


async def last_fired_at(session: AsyncSession, rule_id: int) -> datetime | None:
    return await session.scalar(select(Rule.last_fired_at).where(Rule.id == rule_id))


async def list_firings(
    session: AsyncSession, rule_id: int, *, limit: int = 50, cursor: str | None = None
) -> tuple[Sequence[RuleFiring], str | None]:
    """Newest first."""
    query = select(RuleFiring).where(RuleFiring.rule_id == rule_id).order_by(RuleFiring.id.desc())
    if cursor:
        query = query.where(RuleFiring.id < decode_cursor(cursor))
    rows = list((await session.scalars(query.limit(limit + 1))).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


# --- alerts -------------------------------------------------------------------------------------------


async def raise_alert(
    session: AsyncSession,
    *,
    rule_id: int,
    rule_name: str,
    station_id: str,
    severity: str,
    message: str,
    value: float | None,
    channel: str | None,
    device_id: str | None,
    now: datetime,
) -> tuple[Alert, bool]:
    """Raise an alert, or bump the rule's active one (one active alert per rule until acknowledged).
    Returns the alert and whether it is new; an `alert.raised` event goes out after the commit."""
    alert = await session.scalar(
        select(Alert)
        .where(Alert.rule_id == rule_id, Alert.status == "active")
        .order_by(Alert.id.desc())
        .limit(1)
    )
    new = alert is None
    if alert is None:
        alert = Alert(
            station_id=station_id,
            rule_id=rule_id,
            rule_name=rule_name,
            severity=severity,
            message=message,
            value=value,
            channel=channel,
            device_id=device_id,
            status="active",
            count=1,
            raised_at=now,
            last_raised_at=now,
        )
        session.add(alert)
    else:
        alert.count += 1
        alert.last_raised_at, alert.value, alert.message = now, value, message
        alert.severity, alert.channel, alert.device_id, alert.rule_name = (
            severity,
            channel,
            device_id,
            rule_name,
        )
    await session.flush()
    emit(session, ALERT_RAISED, {**alert_out(alert).model_dump(mode="json"), "new": new}, station_id)
    return alert, new


async def get_alert(session: AsyncSession, alert_id: int) -> Alert:
    alert = await session.get(Alert, alert_id)
    if alert is None:
        raise AlertNotFound(f"No alert {alert_id}.")
    return alert


async def acknowledge_alert(session: AsyncSession, alert: Alert, actor: str) -> bool:
    """Mark it acknowledged; returns False (and changes nothing) if it already was."""
    if alert.status == "acknowledged":
        return False
    alert.status, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", utcnow(), actor
    emit(session, ALERT_ACKNOWLEDGED, alert_out(alert).model_dump(mode="json"), alert.station_id)
    return True


async def list_alerts(
    session: AsyncSession,
    *,
    stations: Collection[str] | None,
    station_id: str | None = None,
    status: str | None = None,
    rule_id: int | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[Sequence[Alert], str | None]:
    """Newest first; `status` "active" or "acknowledged" (None: both)."""
    query = select(Alert).order_by(Alert.id.desc())
    if stations is not None:
        query = query.where(Alert.station_id.in_(list(stations)))
    if station_id:
        query = query.where(Alert.station_id == station_id)
    if status:
        query = query.where(Alert.status == status)
    if rule_id is not None:
        query = query.where(Alert.rule_id == rule_id)
    if cursor:
        query = query.where(Alert.id < decode_cursor(cursor))
    rows = list((await session.scalars(query.limit(limit + 1))).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def count_active_alerts(session: AsyncSession, stations: Collection[str] | None) -> dict[str, int]:
    """Active alerts by severity, in the stations given (None: all)."""
    query = select(Alert.severity, func.count()).where(Alert.status == "active").group_by(Alert.severity)
    if stations is not None:
        query = query.where(Alert.station_id.in_(list(stations)))
    counts = {"info": 0, "warning": 0, "critical": 0}
    for severity, count in (await session.execute(query)).all():
        counts[severity] = int(count)
    return counts
