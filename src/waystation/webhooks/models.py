"""Tables of durable HTTP delivery: webhook endpoints, deliveries (also used by flow endpoints), attempts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class Webhook(Base):
    """An HTTP endpoint that receives signed bus events (docs/webhooks.md).

    `station_id` None means installation-wide: events of every station. Otherwise the endpoint gets the
    events of its station plus the installation-wide ones (events with no station) it subscribed to.
    """

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str | None] = mapped_column(
        ForeignKey("stations.id", ondelete="CASCADE"), index=True, default=None
    )
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)  # patterns: `device.*`, `*`
    # `whsec_…` encrypted with the station key: the plaintext is needed to sign every attempt.
    secret_sealed: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(default=True)
    max_concurrency: Mapped[int] = mapped_column(Integer, default=2)  # attempts in flight at once
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One message to POST somewhere, kept until it succeeded or ran out of attempts."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_due", "status", "next_attempt_at"),
        Index("ix_deliveries_key", "ordering_key", "id"),
        Index("ix_deliveries_webhook", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # flow | webhook
    source: Mapped[str] = mapped_column(String(120))  # the flow code or webhook id
    # Deleting an endpoint deletes its deliveries (pending ones would have nowhere to go).
    webhook_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), default=None
    )
    event_type: Mapped[str | None] = mapped_column(String(64), default=None)  # webhooks: the event's type
    ordering_key: Mapped[str] = mapped_column(String(160))  # deliveries with one key go out in order
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)  # exactly the bytes sent (JSON)
    message_id: Mapped[str] = mapped_column(String(64))  # the `webhook-id` header, stable across retries
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|dead_letter
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=6)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
