"""Request and response shapes of the snapshot API (and the diff the CLI prints)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

MIN_PASSPHRASE = 8


class RowChange(BaseModel):
    key: str  # the natural key (username, flow code, device id …)
    id: Any  # the primary key
    label: str | None = None  # a name or URL, to recognise the row
    fields: list[str] | None = None  # changed rows: which fields differ (never their values)


class EntityDiff(BaseModel):
    added: list[RowChange] = Field(default_factory=list)
    changed: list[RowChange] = Field(default_factory=list)
    removed: list[RowChange] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=lambda: {"added": 0, "changed": 0, "removed": 0})
    unchanged: int = 0

    def add(self, kind: Literal["added", "changed", "removed"], change: RowChange, limit: int) -> None:
        """Count every row; list the first `limit` of each kind (`counts` stays complete)."""
        self.counts[kind] += 1
        listed: list[RowChange] = getattr(self, kind)
        if len(listed) < limit:
            listed.append(change)


class SnapshotDiff(BaseModel):
    entities: dict[str, EntityDiff]

    @property
    def total(self) -> dict[str, int]:
        out = {"added": 0, "changed": 0, "removed": 0}
        for entity in self.entities.values():
            for kind, n in entity.counts.items():
                out[kind] += n
        return out

    def summary(self) -> str:
        parts = [
            f"{name}: " + ", ".join(f"{n} {kind}" for kind, n in e.counts.items() if n)
            for name, e in self.entities.items()
            if any(e.counts.values())
        ]
        return "; ".join(parts) or "no changes"


class ExportRequest(BaseModel):
    passphrase: str = Field(min_length=MIN_PASSPHRASE, max_length=1024)
    store: bool = False  # also keep a copy in the data directory's snapshots folder


class ImportResult(BaseModel):
    applied: bool
    schema_version: int
    created_at: str | None
    station_version: str | None
    diff: SnapshotDiff
    totals: dict[str, int]


class SnapshotFile(BaseModel):
    name: str
    size: int
    created_at: datetime


class ScheduleStatus(BaseModel):
    enabled: bool
    reason: str | None = None  # why scheduled snapshots are off or failing
    interval_hours: float
    keep: int
    last_run_at: datetime | None = None
    last_file: str | None = None
    last_error: str | None = None


class SnapshotList(BaseModel):
    items: list[SnapshotFile]
    next_cursor: str | None = None
    schedule: ScheduleStatus | None = None
