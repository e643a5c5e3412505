"""The status sampler: every `system_status_interval_seconds` it turns ingest counters into rates,
refreshes the backlog gauges of `/metrics`, and, while someone listens on the event stream, publishes a
brief `system.status` event (nobody listening: no database work for it)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge

from waystation.status import projections

if TYPE_CHECKING:
    from waystation.context import AppContext
    from waystation.status.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_EVENT = "system.status"


class StatusSampler:
    def __init__(self, ctx: AppContext, metrics: Metrics, registry: CollectorRegistry | None = None) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.interval = ctx.settings.system_status_interval_seconds
        self._rates = projections.RateSampler(window_seconds=max(60.0, 4 * self.interval))
        self._gauges: dict[str, Gauge] = {}
        self._task_kinds: set[str] = set()
        if registry is not None:
            self._gauges = {
                "deliveries_pending": Gauge(
                    "waystation_deliveries_pending", "Webhook and flow deliveries waiting", registry=registry
                ),
                "deliveries_dead_letter": Gauge(
                    "waystation_deliveries_dead_letter",
                    "Deliveries that gave up (re-deliverable by hand)",
                    registry=registry,
                ),
            }
        self.published = 0

    def rates(self) -> dict[str, float]:
        return self._rates.observe(projections.ingest_counters(self.ctx))

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval)

    def count_tasks(self) -> None:
        tasks = asyncio.all_tasks()
        self.metrics.asyncio_tasks.set(len(tasks))
        by_coroutine: dict[str, int] = dict.fromkeys(self._task_kinds, 0)  # a kind that ended reads 0
        for task in tasks:
            coro = task.get_coro()
            name = getattr(coro, "__qualname__", None) or type(coro).__name__
            by_coroutine[name] = by_coroutine.get(name, 0) + 1
        self._task_kinds.update(by_coroutine)
        for name, count in by_coroutine.items():
            self.metrics.asyncio_tasks_by_coroutine.labels(name).set(count)

    async def tick(self) -> dict[str, Any] | None:
        rates = self.rates()
        self.count_tasks()
        async with self.ctx.db.session() as session:
            backlogs = await projections.backlogs(session)
            for key, gauge in self._gauges.items():
                gauge.set(backlogs[key])
            if self.metrics.status_listeners <= 0:
                return None
            body = await projections.system(session, self.ctx, rates, brief=True)
        # Installation-wide (no station): only streams that see every station get it (realtime/router.py).
        self.ctx.bus.emit(STATUS_EVENT, body)
        self.published += 1
        return body
