"""Tables of the operations-log slice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class LogEntry(Base):
    """One line of the operations log. Listing is newest first per station, so the indices lead with the
    filter columns and end with `ts`; the plain `ts` index serves retention and installation-wide reads."""

    __tablename__ = "log_entries"
    __table_args__ = (
        Index("ix_log_entries_station_ts", "station_id", "ts"),
        Index("ix_log_entries_device_ts", "device_id", "ts"),
        Index("ix_log_entries_ts", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(8))  # debug | info | warning | error
    source: Mapped[str] = mapped_column(String(32))  # rule | ota | device | system | user | …
    message: Mapped[str] = mapped_column(Text)
    # Ids of what the entry is about, e.g. {"device_id": …, "rule_id": …, "ota_job_id": …}.
    related: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Copied out of `related` so the device filter is an indexed column on every database. No foreign key:
    # the log outlives the device it talks about.
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # None for installation-wide entries, which only installation-wide roles see.
    station_id: Mapped[str | None] = mapped_column(
        ForeignKey("stations.id", ondelete="CASCADE"), default=None
    )
    actor: Mapped[str | None] = mapped_column(String(120), default=None)  # who wrote a manual note
