"""Scheduled snapshots: every `snapshot_interval_hours`, an encrypted snapshot in `<data_dir>/snapshots/`,
keeping the newest `snapshot_keep`. The passphrase comes from `snapshot_passphrase_file` (read at each
run, so it can be rotated without a restart); without one the job is off and its status says why."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from waystation.config import Settings
from waystation.db import Database
from waystation.secrets_box import SecretBox
from waystation.snapshots import store
from waystation.snapshots.operations import Actor, export_snapshot
from waystation.snapshots.schemas import MIN_PASSPHRASE, ScheduleStatus

log = logging.getLogger(__name__)

RETRY_AFTER = timedelta(hours=1)  # after a failed run (at most the interval)


class SnapshotScheduler:
    def __init__(self, settings: Settings, db: Database, box: SecretBox) -> None:
        self.settings = settings
        self.db = db
        self.box = box
        self.last_run_at: datetime | None = None
        self.last_file: str | None = None
        self.last_error: str | None = None

    @property
    def interval(self) -> timedelta:
        return timedelta(hours=self.settings.snapshot_interval_hours)

    def off_reason(self) -> str | None:
        if self.settings.snapshot_interval_hours <= 0:
            return "WAYSTATION_SNAPSHOT_INTERVAL_HOURS is 0"
        if self.settings.snapshot_passphrase_file is None:
            return "WAYSTATION_SNAPSHOT_PASSPHRASE_FILE is not set"
        return None

    def status(self) -> ScheduleStatus:
        reason = self.off_reason()
        return ScheduleStatus(
            enabled=reason is None,
            reason=reason or self.last_error,
            interval_hours=self.settings.snapshot_interval_hours,
            keep=self.settings.snapshot_keep,
            last_run_at=self.last_run_at,
            last_file=self.last_file,
            last_error=self.last_error,
        )

    def _passphrase(self) -> str:
        path = self.settings.snapshot_passphrase_file
        assert path is not None
        try:
            secret = Path(path).read_text().strip("\r\n")
        except OSError as exc:
            raise RuntimeError(f"cannot read WAYSTATION_SNAPSHOT_PASSPHRASE_FILE: {exc.strerror}") from exc
        if len(secret) < MIN_PASSPHRASE:
            raise RuntimeError(f"the passphrase file holds fewer than {MIN_PASSPHRASE} characters")
        return secret

    async def run_once(self) -> Path:
        """Write one snapshot and prune; records the outcome for `status()`."""
        self.last_run_at = datetime.now(UTC)
        try:
            data = await export_snapshot(
                self.db, self.box, self._passphrase(), Actor("scheduler"), " (scheduled)"
            )
            path = await asyncio.to_thread(store.write, self.settings, data)
            gone = await asyncio.to_thread(store.prune, self.settings, self.settings.snapshot_keep)
        except Exception as exc:
            self.last_error = str(exc) or type(exc).__name__
            raise
        self.last_error = None
        self.last_file = path.name
        log.info("scheduled snapshot %s written (%d old one(s) pruned)", path.name, len(gone))
        return path

    def _next_due(self) -> datetime:
        newest = store.list_files(self.settings)
        if not newest:
            return datetime.now(UTC)
        return newest[0].created_at + self.interval

    async def run(self) -> None:
        reason = self.off_reason()
        if reason is not None:
            log.info("scheduled snapshots are off: %s", reason)
            return
        while True:
            wait = (self._next_due() - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.run_once()
            except Exception:
                log.exception("scheduled snapshot failed")
                await asyncio.sleep(min(RETRY_AFTER, self.interval).total_seconds())
