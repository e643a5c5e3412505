"""The rule engine service: evaluates committed readings and device events against the enabled rules,
and fires them.

    bus (`_telemetry.readings`: every stored reading; `device.event`; `rule.changed`) → own bounded
    subscription → evaluate in memory (operators, `for_seconds` holds) → firing task: claim the cooldown
    atomically in the database and record the firing → run the actions one by one, each in its own unit
    of work → record outcomes.

It never slows ingest: the bus never blocks a publisher, and this subscription drops its oldest events
when it falls behind (logged at most once a minute, counted in `waystation_rule_events_dropped_total`;
`for_seconds` holds are reset then, since a reading that broke a condition may have been lost). Firings
run beside evaluation, at most one per rule at a time and `MAX_FIRING_TASKS` in all.

Each worker evaluates the readings it ingested itself; the cooldown claim in the database keeps
several workers from firing one rule twice. `rule.changed` reloads a rule at once on the worker that
changed it; a periodic reload (`WAYSTATION_RULES_RELOAD_INTERVAL_SECONDS`) is the safety net for others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import insert, select, update

from waystation.bus import Bus, Event, Gap, Subscription, TypeFilter
from waystation.config import Settings
from waystation.db import Database, after_commit, utcnow
from waystation.errors import DeviceNotFound, WaystationError
from waystation.logs import RateLimitedLog
from waystation.oplog.service import write_entry
from waystation.rules import service
from waystation.rules.engine import (
    HoldTracker,
    condition_holds,
    describe,
    event_matches,
    event_value,
    render_message,
)
from waystation.rules.models import Rule, RuleFiring
from waystation.telemetry.ingest import READINGS_EVENT, from_us
from waystation.webhooks.models import Delivery

if TYPE_CHECKING:
    from waystation.devices.runtime import DeviceRuntime
    from waystation.webhooks.fanout import WebhookFanout

log = logging.getLogger(__name__)

MAX_FIRING_TASKS = 64  # firings in progress at once; beyond this, candidates are skipped (and counted)
MAX_TIMER_SLEEP = 1.0  # the `for_seconds` timer looks at least this often
SUBSCRIBED = (READINGS_EVENT, "device.event", service.CHANGED_EVENT)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """What evaluation needs of one enabled rule (a snapshot: a change replaces it)."""

    id: int
    station_id: str
    name: str
    channel: str | None
    event: str | None
    device_id: str | None
    operator: str | None
    threshold: float | None
    threshold_high: float | None
    for_seconds: float
    cooldown_seconds: float
    actions: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, rule: Rule) -> RuleSpec:
        return cls(
            rule.id,
            rule.station_id,
            rule.name,
            rule.channel,
            rule.event,
            rule.device_id,
            rule.operator,
            rule.threshold,
            rule.threshold_high,
            float(rule.for_seconds),
            float(rule.cooldown_seconds),
            tuple(rule.actions or ()),
        )

    def holds(self, value: float) -> bool:
        if self.operator is None or self.threshold is None:
            return True  # an event rule without an operator: every matching event
        return condition_holds(self.operator, value, self.threshold, self.threshold_high)


@dataclass(frozen=True, slots=True)
class Trigger:
    """What made a rule fire: the reading or event, as the firing records it."""

    value: float | None
    reading_ts: str | None
    channel: str | None
    device_id: str | None


def _device_of(channel: str) -> str | None:
    kind, _, rest = channel.partition(":")
    return rest.split("/", 1)[0] if kind == "device" else None


def _parse_ts(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, WaystationError):
        return f"{exc.code}: {exc.detail}"[:500]
    return f"internal error ({type(exc).__name__})"


class RuleEngine:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        devices: DeviceRuntime | None = None,
        fanout: WebhookFanout | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.devices = devices
        self.fanout = fanout
        self.rules: dict[int, RuleSpec] = {}
        self._by_channel: dict[tuple[str, str], list[RuleSpec]] = {}
        self._event_rules: dict[str, list[RuleSpec]] = {}
        self.tracker = HoldTracker()
        # Wall-clock time before which a rule is known to be cooling down, so evaluation does not ask
        # the database on every reading. Only a hint: the database claim decides.
        self._cooling_until: dict[int, float] = {}
        self._firing: dict[int, asyncio.Task[None]] = {}
        self._timer_wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._drop_log = RateLimitedLog(log, 60.0)
        self._skip_log = RateLimitedLog(log, 60.0)
        # Counters for `GET /api/v1/status/rules` (this worker).
        self.evaluated = 0
        self.fired = 0
        self.suppressed = 0  # candidates the cooldown claim refused
        self.skipped = 0  # candidates dropped because too many firings were in progress
        self.action_failures = 0
        self.dropped = 0
        self.last_lag: float | None = None
        self.reloads = 0
        self._lag: Histogram | None = None
        self._evaluations: Counter | None = None
        self._firings: Counter | None = None
        self._failures: Counter | None = None
        self._dropped_metric: Counter | None = None
        if registry is not None:
            self._lag = Histogram(
                "waystation_rule_lag_seconds",
                "From a committed batch or device event being published to its evaluation by the rules",
                registry=registry,
                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            )
            self._evaluations = Counter(
                "waystation_rule_evaluations_total",
                "Readings and device events checked against a rule",
                registry=registry,
            )
            self._firings = Counter("waystation_rule_firings_total", "Rule firings", registry=registry)
            self._failures = Counter(
                "waystation_rule_action_failures_total",
                "Rule actions that failed, by action type",
                ["type"],
                registry=registry,
            )
            self._dropped_metric = Counter(
                "waystation_rule_events_dropped_total",
                "Bus events the rule engine missed because its queue overflowed",
                registry=registry,
            )

    # --- loading ------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Subscribe (before events flow, so none is missed) and read the enabled rules."""
        if self._sub is None:
            self._sub = self.bus.subscribe(TypeFilter(SUBSCRIBED), maxsize=self.settings.rules_queue_size)
        await self.reload()

    def detach(self) -> None:
        """Stop following the bus (a worker that is no longer the leader); `run()` follows it again."""
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        self.tracker.clear()

    async def reload(self) -> None:
        async with self.db.session() as session:
            rows = (await session.scalars(select(Rule).where(Rule.enabled.is_(True)))).all()
        fresh: dict[int, RuleSpec] = {}
        for row in rows:
            spec = fresh[row.id] = RuleSpec.of(row)
            if self.rules.get(row.id) != spec:
                self.tracker.forget(row.id)  # a changed condition starts its wait over
            self._note_fired(row.id, spec, row.last_fired_at)  # also learns other workers' firings
        for rule_id in set(self.rules) - set(fresh):
            self._drop_state(rule_id)
        self.rules = fresh
        self._index()
        self.reloads += 1

    async def reload_rule(self, rule_id: int) -> None:
        async with self.db.session() as session:
            row = await session.get(Rule, rule_id)
        if row is None or not row.enabled:
            self.rules.pop(rule_id, None)
            self._drop_state(rule_id)
        else:
            spec = RuleSpec.of(row)
            if self.rules.get(rule_id) != spec:
                self.tracker.forget(rule_id)  # a changed condition starts its wait over
            self.rules[rule_id] = spec
            self._note_fired(rule_id, spec, row.last_fired_at)
        self._index()

    def _note_fired(self, rule_id: int, spec: RuleSpec, fired_at: datetime | None) -> None:
        if fired_at is None:
            self._cooling_until.pop(rule_id, None)
        else:
            self._cooling_until[rule_id] = fired_at.timestamp() + spec.cooldown_seconds

    def _drop_state(self, rule_id: int) -> None:
        self.tracker.forget(rule_id)
        self._cooling_until.pop(rule_id, None)

    def _index(self) -> None:
        by_channel: dict[tuple[str, str], list[RuleSpec]] = {}
        events: dict[str, list[RuleSpec]] = {}
        for spec in self.rules.values():
            if spec.channel is not None:
                by_channel.setdefault((spec.station_id, spec.channel), []).append(spec)
            elif spec.event is not None:
                events.setdefault(spec.station_id, []).append(spec)
        self._by_channel, self._event_rules = by_channel, events
        self._timer_wake.set()

    # --- running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self._sub is None:
            await self.load()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._consume())
                tasks.create_task(self._timer())
                tasks.create_task(self._periodic_reload())
        finally:
            for task in list(self._firing.values()):
                task.cancel()

    async def _consume(self) -> None:
        sub = self._sub
        assert sub is not None
        while True:
            item = await sub.get()
            if isinstance(item, Gap):
                await self._on_gap(item.dropped)
                continue
            lag = max(0.0, time.time() - item.ts)
            self.last_lag = lag
            if self._lag is not None:
                self._lag.observe(lag)
            try:
                if item.type == READINGS_EVENT:
                    self.evaluate_batch(item)
                elif item.type == "device.event":
                    self.evaluate_event(item)
                else:
                    await self.reload_rule(int(item.data["rule_id"]))
            except Exception:  # one bad event must not stop evaluation
                log.exception("rule evaluation of a %s event failed", item.type)

    async def _on_gap(self, count: int) -> None:
        self.dropped += count
        if self._dropped_metric is not None:
            self._dropped_metric.inc(count)
        self._drop_log.warning(
            "gap",
            time.monotonic(),
            "rule engine queue overflowed: %d events dropped without evaluation (%d so far); "
            "pending for_seconds waits restart",
            count,
            self.dropped,
        )
        # A dropped reading may have broken a condition: start every wait over rather than fire on it. A
        # dropped `rule.changed` would leave a stale rule: read them all again.
        self.tracker.clear()
        try:
            await self.reload()
        except Exception:
            log.exception("reloading the rules after a gap failed")

    async def _periodic_reload(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rules_reload_interval_seconds)
            try:
                await self.reload()
            except Exception:
                log.exception("periodic rule reload failed")

    async def _timer(self) -> None:
        """Fire `for_seconds` rules whose condition has held long enough, without waiting for another
        reading (a device that reports every 5 minutes still fires a 60 s rule on time)."""
        while True:
            now = time.time()
            next_due = now + MAX_TIMER_SLEEP
            for rule_id, hold in list(self.tracker.holds.items()):
                spec = self.rules.get(rule_id)
                if spec is None:
                    self.tracker.forget(rule_id)
                    continue
                if not hold.armed:
                    continue
                due = max(hold.since + spec.for_seconds, self._cooling_until.get(rule_id, 0.0))
                if due <= now:
                    trigger = Trigger(hold.value, hold.reading_ts, hold.channel, hold.device_id)
                    if self._candidate(spec, trigger):
                        hold.armed = False
                else:
                    next_due = min(next_due, due)
            self._timer_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), max(0.01, next_due - time.time()))

    # --- evaluation (synchronous: no awaits, so a batch is evaluated as one step) -------------------------

    def evaluate_batch(self, ev: Event) -> None:
        station_id = ev.station_id
        if station_id is None:
            return
        now = time.time()
        # Every stored reading in time order, not only the batch's latest per channel: a spike followed by a
        # normal value in the same batch still fires, and a `for_seconds` hold is broken by any dip.
        for channel, ts_us, value in ev.data.get("readings", ()):
            specs = self._by_channel.get((station_id, channel))
            if not specs:
                continue
            trigger = Trigger(float(value), from_us(ts_us).isoformat(), channel, _device_of(channel))
            for spec in specs:
                self._evaluate(spec, trigger, now)

    def evaluate_event(self, ev: Event) -> None:
        station_id = ev.station_id
        specs = self._event_rules.get(station_id) if station_id is not None else None
        if not specs:
            return
        data = ev.data.get("data")
        if not isinstance(data, dict):
            return
        device_id, kind = str(ev.data.get("device_id")), str(ev.data.get("kind"))
        now = time.time()
        for spec in specs:
            assert spec.event is not None
            if not event_matches(spec.event, spec.device_id, device_id, kind, data):
                continue
            value = event_value(data)
            if spec.operator is not None and value is None:
                continue  # nothing to compare: the event carries no numeric data.value
            self._evaluate(spec, Trigger(value, ev.data.get("ts"), None, device_id), now)

    def _evaluate(self, spec: RuleSpec, trigger: Trigger, now: float) -> None:
        self.evaluated += 1
        if self._evaluations is not None:
            self._evaluations.inc()
        met = trigger.value is None or spec.holds(trigger.value)
        if spec.for_seconds <= 0:
            if met:
                self._candidate(spec, trigger)
            return
        hold = self.tracker.observe(
            spec.id, met, now, trigger.value, trigger.reading_ts, trigger.channel, trigger.device_id
        )
        if hold is None:
            return
        if self.tracker.due(hold, spec.for_seconds, now):
            if self._candidate(spec, trigger):
                hold.armed = False
        else:
            self._timer_wake.set()  # a new wait may end before the timer's next look

    def _candidate(self, spec: RuleSpec, trigger: Trigger) -> bool:
        """The condition says fire: start a firing unless one is running or the rule is cooling down.
        Returns whether a firing started (the database may still refuse it: another worker's cooldown)."""
        if spec.id in self._firing or time.time() < self._cooling_until.get(spec.id, 0.0):
            return False
        if len(self._firing) >= MAX_FIRING_TASKS:
            self.skipped += 1
            self._skip_log.warning(
                "busy",
                time.monotonic(),
                "rule %d not fired: %d firings already in progress",
                spec.id,
                MAX_FIRING_TASKS,
            )
            return False
        task = asyncio.get_running_loop().create_task(
            self._fire_safely(spec, trigger), name=f"rule-{spec.id}"
        )
        self._firing[spec.id] = task
        task.add_done_callback(functools.partial(self._fired, spec.id))
        return True

    def _fired(self, rule_id: int, task: asyncio.Task[None]) -> None:
        if self._firing.get(rule_id) is task:
            del self._firing[rule_id]

    # --- firing -------------------------------------------------------------------------------------

    async def _fire_safely(self, spec: RuleSpec, trigger: Trigger) -> None:
        try:
            await self.fire(spec, trigger)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database is down, most likely: back off for a cooldown's worth (at least a second) so
            # a held condition does not retry on every reading.
            log.exception("firing rule %d failed", spec.id)
            self._cooling_until[spec.id] = time.time() + max(1.0, min(spec.cooldown_seconds, 60.0))

    async def fire(self, spec: RuleSpec, trigger: Trigger, now: datetime | None = None) -> int | None:
        """Claim the cooldown and record the firing in one transaction, then run the actions. Returns the
        firing id, or None if the cooldown (maybe another worker's firing) refused it."""
        now = now or utcnow()
        async with self.db.session() as session:
            if not await service.claim_firing(session, spec.id, now, spec.cooldown_seconds):
                fired_at = await service.last_fired_at(session, spec.id)
                claimed = None
            else:
                firing = RuleFiring(
                    rule_id=spec.id,
                    station_id=spec.station_id,
                    ts=now,
                    reading_ts=_parse_ts(trigger.reading_ts),
                    value=trigger.value,
                    channel=trigger.channel,
                    device_id=trigger.device_id,
                    status="running",
                    outcomes=[],
                )
                session.add(firing)
                await session.flush()
                claimed = firing.id
                webhook_rows = self._webhook_deliveries(spec, trigger, claimed, now)
                if webhook_rows and self.fanout is not None:
                    await session.execute(insert(Delivery), webhook_rows)
                    after_commit(session, self.fanout.dispatcher.wake)
        if claimed is None:
            self.suppressed += 1
            self._note_fired(spec.id, spec, fired_at)
            return None
        self._cooling_until[spec.id] = now.timestamp() + spec.cooldown_seconds
        self.fired += 1
        if self._firings is not None:
            self._firings.inc()
        outcomes = [await self._run_action(spec, trigger, claimed, action, now) for action in spec.actions]
        if not any(action.get("type") == "webhook" for action in spec.actions):
            data = self._fired_data(spec, trigger, claimed, now, webhook=False)
            self.bus.emit(service.FIRED_EVENT, data, spec.station_id)  # live event stream only
        failed = sum(1 for o in outcomes if not o["ok"])
        status = "ok" if not failed else "failed" if failed == len(outcomes) else "partial"
        async with self.db.session() as session:
            await session.execute(
                update(RuleFiring)
                .where(RuleFiring.id == claimed)
                .values(status=status, outcomes=outcomes)
                .execution_options(synchronize_session=False)
            )
        return claimed

    async def _run_action(
        self, spec: RuleSpec, trigger: Trigger, firing_id: int, action: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        kind = str(action.get("type"))
        runner: Callable[..., Awaitable[dict[str, Any]]] = {
            "webhook": self._webhook,
            "log": self._log,
            "command": self._command,
            "alert": self._alert,
        }[kind]
        try:
            return {"type": kind, "ok": True, **await runner(spec, trigger, firing_id, action, now)}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A failing action is recorded in the firing; the other actions and later firings go on.
            if not isinstance(exc, WaystationError):
                log.exception("rule %d: %s action failed", spec.id, kind)
            self.action_failures += 1
            if self._failures is not None:
                self._failures.labels(kind).inc()
            return {"type": kind, "ok": False, "error": _failure(exc)}

    def _fields(self, spec: RuleSpec, trigger: Trigger) -> dict[str, Any]:
        return {
            "rule": spec.name,
            "value": trigger.value,
            "channel": trigger.channel,
            "device_id": trigger.device_id,
            "event": spec.event,
            "threshold": spec.threshold,
            "threshold_high": spec.threshold_high,
            "operator": spec.operator,
        }

    def _default_message(self, spec: RuleSpec, trigger: Trigger) -> str:
        subject = trigger.channel or f"{spec.event} on {trigger.device_id}"
        value = f" = {trigger.value:g}" if trigger.value is not None else ""
        condition = describe(spec.operator, spec.threshold, spec.threshold_high)
        return f"Rule {spec.name!r} fired: {subject}{value} ({condition})"

    def _message(self, spec: RuleSpec, trigger: Trigger, action: dict[str, Any]) -> str:
        template = action.get("message")
        if not template:
            return self._default_message(spec, trigger)
        return render_message(str(template), self._fields(spec, trigger))

    def _webhook_deliveries(
        self, spec: RuleSpec, trigger: Trigger, firing_id: int, now: datetime
    ) -> list[dict[str, Any]]:
        """Delivery rows for a rule with a webhook action, written in the firing's own transaction: the
        firing and its webhooks commit together, so a crash right after cannot lose them."""
        if self.fanout is None or not any(a.get("type") == "webhook" for a in spec.actions):
            return []
        data = self._fired_data(spec, trigger, firing_id, now, webhook=True)
        return self.fanout.rows_for([Event(service.FIRED_EVENT, data, spec.station_id)])

    async def _webhook(
        self, spec: RuleSpec, trigger: Trigger, firing_id: int, _action: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        # The deliveries were written with the firing; this puts the firing on the live event stream.
        data = self._fired_data(spec, trigger, firing_id, now, webhook=True)
        ev = Event(service.FIRED_EVENT, {**data, "deliveries_written": True}, spec.station_id)
        self.bus.publish(ev)
        result: dict[str, Any] = {}
        if self.fanout is not None:
            plain = Event(service.FIRED_EVENT, data, spec.station_id)
            result["endpoints"] = sum(1 for hook in self.fanout.hooks.values() if hook.wants(plain))
        return result

    @staticmethod
    def _fired_data(
        spec: RuleSpec, trigger: Trigger, firing_id: int, now: datetime, *, webhook: bool
    ) -> dict[str, Any]:
        """The `rule.fired` payload. `webhook` says whether the rule has a webhook action: every firing is
        on the live event stream, but only those go to webhook endpoints."""
        return {
            "rule_id": spec.id,
            "rule_name": spec.name,
            "firing_id": firing_id,
            "channel": trigger.channel,
            "event": spec.event,
            "device_id": trigger.device_id,
            "value": trigger.value,
            "reading_ts": trigger.reading_ts,
            "fired_at": now.isoformat().replace("+00:00", "Z"),
            "operator": spec.operator,
            "threshold": spec.threshold,
            "threshold_high": spec.threshold_high,
            "webhook": webhook,
        }

    async def _log(
        self, spec: RuleSpec, trigger: Trigger, firing_id: int, action: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        related: dict[str, Any] = {"rule_id": spec.id, "firing_id": firing_id}
        if trigger.device_id is not None:
            related["device_id"] = trigger.device_id
        async with self.db.session() as session:
            entry = await write_entry(
                session,
                str(action.get("level") or "warning"),
                "rule",
                self._message(spec, trigger, action),
                related=related,
                station_id=spec.station_id,
                ts=now,
            )
        return {"log_entry_id": entry.id}

    async def _command(
        self, spec: RuleSpec, trigger: Trigger, firing_id: int, action: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        if self.devices is None:
            raise RuntimeError("the device runtime is not running")
        device_id = str(action["device_id"])
        async with self.db.session() as session:
            # The device may have been deleted or moved since the rule was written.
            if await service.device_at(session, spec.station_id, device_id) is None:
                raise DeviceNotFound(f"No device {device_id!r} at the rule's station.")
        # Validated against the device's type again here (types and devices change), stored and sent.
        cmd = await self.devices.submit_command(
            device_id, str(action["action"]), dict(action.get("params") or {}), f"rule:{spec.id}", None
        )
        return {"device_id": device_id, "request_id": cmd.request_id, "status": cmd.status}

    async def _alert(
        self, spec: RuleSpec, trigger: Trigger, firing_id: int, action: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        async with self.db.session() as session:
            alert, new = await service.raise_alert(
                session,
                rule_id=spec.id,
                rule_name=spec.name,
                station_id=spec.station_id,
                severity=str(action.get("severity") or "warning"),
                message=self._message(spec, trigger, action)[:500],
                value=trigger.value,
                channel=trigger.channel,
                device_id=trigger.device_id,
                now=now,
            )
        return {"alert_id": alert.id, "new": new}

    # --- status ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "rules_loaded": len(self.rules),
            "evaluated": self.evaluated,
            "fired": self.fired,
            "suppressed_by_cooldown": self.suppressed,
            "skipped_busy": self.skipped,
            "action_failures": self.action_failures,
            "dropped_events": self.dropped,
            "holding": len(self.tracker.holds),
            "firing_now": len(self._firing),
            "lag_seconds": round(self.last_lag, 6) if self.last_lag is not None else None,
        }

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
