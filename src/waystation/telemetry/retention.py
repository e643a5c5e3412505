"""Retention: purge raw datapoints and each rollup level past their age, in small batches.

Each batch is its own short transaction and the job yields between batches, so purging a year of data
never holds the write lock long enough to stall ingest. Per-channel settings override the global ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import delete, select

from waystation.config import Settings
from waystation.db import Database
from waystation.telemetry.models import Channel, Datapoint, Rollup1h, Rollup1m

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000


class RetentionJob:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.deleted = {"raw": 0, "1m": 0, "1h": 0}
        self.last_run: float | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except Exception:
                log.exception("retention purge failed; will retry")
            await asyncio.sleep(self.settings.retention_interval_seconds)

    async def purge_once(self) -> dict[str, int]:
        now_us = time.time_ns() // 1000
        s = self.settings
        async with self.db.session() as session:
            channels = (
                await session.execute(
                    select(
                        Channel.pk,
                        Channel.raw_retention_days,
                        Channel.rollup_1m_retention_days,
                        Channel.rollup_1h_retention_days,
                    )
                )
            ).all()
        removed = {"raw": 0, "1m": 0, "1h": 0}
        for pk, raw_days, m_days, h_days in channels:
            removed["raw"] += await self._purge(
                Datapoint, Datapoint.ts, pk, now_us - int((raw_days or s.raw_retention_days) * DAY_US)
            )
            removed["1m"] += await self._purge(
                Rollup1m,
                Rollup1m.bucket,
                pk,
                (now_us - int((m_days or s.rollup_1m_retention_days) * DAY_US)) // 1_000_000,
            )
            removed["1h"] += await self._purge(
                Rollup1h,
                Rollup1h.bucket,
                pk,
                (now_us - int((h_days or s.rollup_1h_retention_days) * DAY_US)) // 1_000_000,
            )
        for key, count in removed.items():
            self.deleted[key] += count
        self.last_run = time.time()
        if any(removed.values()):
            log.info("retention purged %s", removed)
        return removed

    async def _purge(self, model: Any, column: Any, channel_pk: int, cutoff: int) -> int:
        total = 0
        batch = self.settings.retention_batch_rows
        while True:
            oldest = (
                select(column)
                .where(model.channel_pk == channel_pk, column < cutoff)
                .order_by(column)
                .limit(batch)
                .scalar_subquery()
            )
            async with self.db.writer() as session:
                result = await session.execute(
                    delete(model).where(model.channel_pk == channel_pk, column < cutoff, column.in_(oldest))
                )
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
            total += count
            if count < batch:
                return total
            await asyncio.sleep(0)  # let ingest take the write lock between batches
