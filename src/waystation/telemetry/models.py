"""Tables of the telemetry slice.

Datapoints are the hot table: keyed by (channel, ts) with timestamps as epoch microseconds, SQLite
`WITHOUT ROWID` (the primary key is the table), so a row costs a few dozen bytes. Rollups keep
min/max/sum/count per channel per minute and per hour, maintained as batches commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, UTCDateTime, utcnow


class Channel(Base):
    __tablename__ = "channels"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(200), unique=True)  # device:{device_id}/{key}, flow:{code}/{field}
    kind: Mapped[str] = mapped_column(String(16))  # device | flow | controller
    station_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    source_id: Mapped[str] = mapped_column(String(120), index=True)  # the device id, flow code, controller id
    key: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str | None] = mapped_column(String(16), default=None)
    last_value: Mapped[float | None] = mapped_column(Float, default=None)
    last_ts: Mapped[int | None] = mapped_column(BigInteger, default=None)  # epoch µs
    raw_retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    rollup_1m_retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    rollup_1h_retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Datapoint(Base):
    __tablename__ = "datapoints"
    __table_args__ = ({"sqlite_with_rowid": False},)

    channel_pk: Mapped[int] = mapped_column(
        ForeignKey("channels.pk", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # epoch µs
    value: Mapped[float] = mapped_column(Float)
    experiment_id: Mapped[int | None] = mapped_column(Integer, default=None)


class _RollupColumns:
    """min/max/sum/count of one channel over one bucket (the bucket's start, in epoch seconds)."""

    channel_pk: Mapped[int] = mapped_column(
        ForeignKey("channels.pk", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    sum: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(BigInteger)


class Rollup1m(_RollupColumns, Base):
    __tablename__ = "rollups_1m"
    __table_args__ = ({"sqlite_with_rowid": False},)


class Rollup1h(_RollupColumns, Base):
    __tablename__ = "rollups_1h"
    __table_args__ = ({"sqlite_with_rowid": False},)


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_station_running", "station_id", "stopped_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    notes: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_by: Mapped[str | None] = mapped_column(String(120), default=None)
