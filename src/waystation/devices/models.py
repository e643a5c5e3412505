"""Tables of the devices slice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class DeviceType(Base):
    __tablename__ = "device_types"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    capabilities: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # action → JSON Schema of its parameters
    commands: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    builtin: Mapped[bool] = mapped_column(default=False)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(ForeignKey("device_types.id"))
    name: Mapped[str] = mapped_column(String(120))
    zone: Mapped[str | None] = mapped_column(String(120), default=None)
    firmware_version: Mapped[str | None] = mapped_column(String(64), default=None)
    chip: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    # A disabled device keeps its data but loses its broker account (and is disconnected) until enabled.
    enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # SHA-256 of the device's HTTP token (`X-Device-Token`); the token itself is shown once.
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeviceEvent(Base):
    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_ts", "device_id", "ts"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class Command(Base):
    __tablename__ = "commands"
    __table_args__ = (
        Index("ix_commands_device_created", "device_id", "created_at"),
        Index("ix_commands_status", "status"),
    )

    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(120), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
