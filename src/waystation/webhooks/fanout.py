"""From bus events to webhook deliveries: one delivery per matching enabled endpoint, written in one
transaction per batch of events, after which the dispatcher sends them.

The bus subscription only takes the types some enabled endpoint wants. Its queue is bounded
(`WAYSTATION_WEBHOOK_QUEUE_SIZE`): if deliveries cannot be written fast enough (the database is down,
a flood of events), the oldest waiting events are dropped; each drop is logged (at most once a minute)
and counted in `waystation_webhook_events_dropped_total`. Events already written as deliveries are never
lost: those are rows.

Loops are cut: an endpoint never receives `webhook.delivery_failed` about its own deliveries, and no
endpoint receives it about a failed `webhook.delivery_failed` delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from waystation.bus import Bus, Event, Gap, Subscription, TypeFilter
from waystation.config import Settings
from waystation.db import Database
from waystation.logs import RateLimitedLog
from waystation.webhooks.delivery import DeliveryDispatcher, new_message_id
from waystation.webhooks.events import FAILED_EVENT, types_for
from waystation.webhooks.models import Delivery, Webhook

log = logging.getLogger(__name__)

BATCH_EVENTS = 500  # events turned into deliveries per transaction


@dataclass(frozen=True, slots=True)
class HookSpec:
    """What the fan-out needs of one enabled endpoint."""

    id: int
    station_id: str | None
    url: str
    types: frozenset[str]

    @classmethod
    def of(cls, hook: Webhook) -> HookSpec:
        return cls(hook.id, hook.station_id, hook.url, types_for(hook.event_types or []))

    def wants(self, ev: Event) -> bool:
        if ev.type not in self.types:
            return False
        # A station's endpoint gets only its station's events; installation-wide ones (no station: broker
        # sync, MQTT servers, …) go to installation-wide endpoints only, as in the event stream.
        if self.station_id is not None and ev.station_id != self.station_id:
            return False
        if ev.type == "rule.fired":
            # Only rules with a webhook action are sent out, and the rules engine writes those deliveries
            # itself, in the firing's transaction (so a crash cannot lose them): nothing to do here.
            return ev.data.get("webhook") is not False and not ev.data.get("deliveries_written")
        if ev.type != FAILED_EVENT:
            return True
        return ev.data.get("webhook_id") != self.id and ev.data.get("event_type") != FAILED_EVENT


class _WantedTypes(TypeFilter):
    """The subscription's filter: the union of the enabled endpoints' types, read live."""

    def __init__(self, fanout: WebhookFanout) -> None:
        super().__init__()
        self._fanout = fanout

    def matches(self, event_type: str) -> bool:
        return event_type in self._fanout.wanted_types


def event_body(ev: Event) -> str:
    """The JSON body of a webhook: `{"type","timestamp","data"}` (PROTOCOLS §6)."""
    data = dict(ev.data)
    if ev.station_id is not None:
        data.setdefault("station_id", ev.station_id)
    timestamp = datetime.fromtimestamp(ev.ts, UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": ev.type, "timestamp": timestamp, "data": data}).decode()


class WebhookFanout:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        dispatcher: DeliveryDispatcher,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.dispatcher = dispatcher
        self.hooks: dict[int, HookSpec] = {}
        self.wanted_types: frozenset[str] = frozenset()
        self._sub: Subscription | None = None
        self._drop_log = RateLimitedLog(log, 60.0)
        self.dropped = 0
        self.created = 0
        self._dropped_metric: Counter | None = None
        self._created_metric: Counter | None = None
        if registry is not None:
            self._dropped_metric = Counter(
                "waystation_webhook_events_dropped_total",
                "Bus events dropped before becoming webhook deliveries (queue overflow)",
                registry=registry,
            )
            self._created_metric = Counter(
                "waystation_webhook_deliveries_created_total",
                "Webhook deliveries created from bus events",
                registry=registry,
            )

    # --- which endpoints want what --------------------------------------------------------------------

    async def load(self) -> None:
        """Read the enabled endpoints and subscribe (at start-up, before events flow)."""
        await self._reload()
        if self._sub is None:
            # Local events only: with several workers each one turns its own events into deliveries, so
            # an event bridged from another worker is not delivered twice.
            self._sub = self.bus.subscribe(
                _WantedTypes(self), maxsize=self.settings.webhook_queue_size, local_only=True
            )

    async def _reload(self) -> None:
        try:
            async with self.db.session() as session:
                rows = (await session.scalars(select(Webhook).where(Webhook.enabled.is_(True)))).all()
        except Exception:  # the current view is kept; the caller retries
            log.exception("reading the webhook endpoints failed")
            return
        self.hooks = {row.id: HookSpec.of(row) for row in rows}
        self._recompute()

    def apply(self, hook: Webhook) -> None:
        """Follow a created or changed endpoint (called right after its transaction committed, so the
        next event already sees it)."""
        if hook.enabled:
            self.hooks[hook.id] = HookSpec.of(hook)
        else:
            self.hooks.pop(hook.id, None)
        self._recompute()

    def forget(self, hook_id: int) -> None:
        self.hooks.pop(hook_id, None)
        self._recompute()

    def _recompute(self) -> None:
        wanted: set[str] = set()
        for spec in self.hooks.values():
            wanted |= spec.types
        self.wanted_types = frozenset(wanted)

    # --- events to deliveries -------------------------------------------------------------------------

    async def run(self) -> None:
        if self._sub is None:
            await self.load()
        sub = self._sub
        assert sub is not None
        while True:
            batch: list[Event | Gap] = [await sub.get()]
            while len(batch) < BATCH_EVENTS and (item := sub.get_nowait()) is not None:
                batch.append(item)
            events: list[Event] = []
            for item in batch:
                if isinstance(item, Gap):
                    self._dropped(item.dropped)
                else:
                    events.append(item)
            if events and await self._write(events):
                self.dispatcher.wake()

    def _dropped(self, count: int) -> None:
        self.dropped += count
        if self._dropped_metric is not None:
            self._dropped_metric.inc(count)
        self._drop_log.warning(
            "gap",
            time.monotonic(),
            "webhook queue overflowed: %d events dropped without deliveries (%d in total so far)",
            count,
            self.dropped,
        )

    def rows_for(self, events: list[Event]) -> list[dict[str, Any]]:
        """The delivery rows these events make, one per interested endpoint (callers that must write
        them in their own transaction use this, and mark the event `deliveries_written`)."""
        rows: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for ev in events:
            body: str | None = None
            for spec in self.hooks.values():
                if not spec.wants(ev):
                    continue
                body = body or event_body(ev)
                rows.append(
                    {
                        "kind": "webhook",
                        "source": str(spec.id),
                        # Not used for ordering (webhook deliveries are unordered), but names the endpoint.
                        "ordering_key": f"webhook:{spec.id}",
                        "url": spec.url,
                        "body": body,
                        "message_id": new_message_id(),
                        "status": "pending",
                        "attempts": 0,
                        "max_attempts": self.settings.delivery_max_attempts,
                        "next_attempt_at": now,
                        "created_at": now,
                        "webhook_id": spec.id,
                        "event_type": ev.type,
                    }
                )
        return rows

    async def _write(self, events: list[Event]) -> int:
        """Write the deliveries of these events; retried until it works (new events wait meanwhile in
        the bounded queue). Rows are recomputed on each try, so an endpoint deleted meanwhile is left
        out instead of failing the batch forever."""
        delay = 0.5
        while True:
            rows = self.rows_for(events)
            if not rows:
                return 0
            try:
                async with self.db.session() as session:
                    await session.execute(insert(Delivery), rows)
            except IntegrityError:
                # An endpoint was deleted (with it, or with its station) between computing the rows and
                # writing them: read the endpoints again and retry without it.
                log.info("a webhook was deleted while its deliveries were written; retrying without it")
                await asyncio.sleep(min(delay, 0.1))
                delay = min(delay * 2, 10.0)
                await self._reload()
                continue
            except Exception:
                log.exception("writing webhook deliveries failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.created += len(rows)
            if self._created_metric is not None:
                self._created_metric.inc(len(rows))
            return len(rows)

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
