"""Tables of the broker slice: per-device broker accounts and the outbox that syncs them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class DeviceCredential(Base):
    """A device's MQTT account. The password (random, 256 bits) is kept as a SHA-256 hash, for brokers
    that ask the station (`emqx-http`), and sealed with the station key: brokers that store their own hash
    need the plaintext, also when a reconcile recreates an account the broker lost."""

    __tablename__ = "device_credentials"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(255))
    password_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BrokerOutbox(Base):
    """One change the broker must learn about, written in the same transaction as the change itself.

    `op` is `upsert_client` (create or update an account and its ACLs from the database), `delete_client`
    (remove the account and disconnect it) or `reconcile` (compare everything). Rows never hold secrets:
    the worker reads the current credential when it applies an upsert."""

    __tablename__ = "broker_outbox"
    __table_args__ = (Index("ix_broker_outbox_pending", "done_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(32))
    username: Mapped[str | None] = mapped_column(String(128), default=None)
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
