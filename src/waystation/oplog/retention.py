"""Operations-log retention: entries older than `log_retention_days` go, a small batch per transaction.

Short transactions with a yield between them keep a large purge (after the setting was lowered) from
holding SQLite's write lock long enough to stall ingest.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from waystation.config import Settings
from waystation.db import Database, utcnow
from waystation.oplog.service import purge_batch

log = logging.getLogger(__name__)


class LogRetentionJob:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.deleted = 0

    async def run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except Exception:
                log.exception("operations-log purge failed; will retry")
            await asyncio.sleep(self.settings.log_retention_interval_seconds)

    async def purge_once(self) -> int:
        cutoff = utcnow() - timedelta(days=self.settings.log_retention_days)
        batch = self.settings.log_retention_batch_rows
        total = 0
        while True:
            async with self.db.session() as session:
                count = await purge_batch(session, cutoff, batch)
            total += count
            if count < batch:
                break
            await asyncio.sleep(0)  # let other writers take the lock between batches
        self.deleted += total
        if total:
            log.info("operations-log retention removed %d entries older than %s", total, cutoff.isoformat())
        return total
