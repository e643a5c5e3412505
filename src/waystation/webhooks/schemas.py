"""Request and response bodies of the webhook and delivery routes (docs/webhooks.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

EventPattern = Annotated[str, Field(min_length=1, max_length=64)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[EventPattern] = Field(min_length=1, max_length=50)
    description: str = Field(default="", max_length=500)
    enabled: bool = True
    # Omitted: the default station. `null`: installation-wide (installation admins only).
    station_id: str | None = Field(default=None, min_length=1, max_length=32)
    max_concurrency: int = Field(default=2, ge=1, le=50)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[EventPattern] | None = Field(default=None, min_length=1, max_length=50)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=50)


class WebhookOut(BaseModel):
    id: int
    station_id: str | None
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    max_concurrency: int
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    """The answer of create and rotate-secret: the only time the secret is shown."""

    secret: str


class AttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    kind: str
    source: str
    webhook_id: int | None
    event_type: str | None
    message_id: str
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None  # None once it succeeded or was dead-lettered
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut] = Field(default_factory=list)


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None
