"""Tables of the rules slice: rules, their firings, and the alerts raised by `alert` actions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class Rule(Base):
    """A condition on one channel (`channel`) or on a device event (`event`, optionally of one device),
    and the actions to run when it fires. `last_fired_at` is the cooldown's source of truth: a firing
    claims it with one conditional UPDATE, so several workers never fire the same rule twice."""

    __tablename__ = "rules"
    __table_args__ = (Index("ix_rules_station_id", "station_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(String(500), default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    channel: Mapped[str | None] = mapped_column(String(200), default=None)  # device:{id}/{key}, flow:…
    event: Mapped[str | None] = mapped_column(String(64), default=None)  # data.action or the event kind
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)  # event rules: one device
    operator: Mapped[str | None] = mapped_column(String(16), default=None)  # None: any event matches
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    threshold_high: Mapped[float | None] = mapped_column(Float, default=None)  # between, not_between
    for_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cooldown_seconds: Mapped[float] = mapped_column(Float, default=60.0)
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    last_fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RuleFiring(Base):
    """One firing: what fired it and how each action went (`outcomes`, in the rule's action order)."""

    __tablename__ = "rule_firings"
    __table_args__ = (Index("ix_rule_firings_rule_id", "rule_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"))
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # when it fired
    reading_ts: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)  # the reading's or event's
    value: Mapped[float | None] = mapped_column(Float, default=None)
    channel: Mapped[str | None] = mapped_column(String(200), default=None)
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | ok | partial | failed
    outcomes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)


class Alert(Base):
    """An alert raised by a rule's `alert` action. While one is active (not acknowledged), further
    firings of the same rule update it (`count`, `last_raised_at`, `value`) instead of piling up new ones."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_station_status", "station_id", "status"),
        Index("ix_alerts_rule_status", "rule_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    # The alert outlives its rule (it is history); the name is kept for that.
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("rules.id", ondelete="SET NULL"), default=None)
    rule_name: Mapped[str] = mapped_column(String(120))
    severity: Mapped[str] = mapped_column(String(16), default="warning")  # info | warning | critical
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float, default=None)
    channel: Mapped[str | None] = mapped_column(String(200), default=None)
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | acknowledged
    count: Mapped[int] = mapped_column(Integer, default=1)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(120), default=None)
