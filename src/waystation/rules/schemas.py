"""Request and response bodies of the rule and alert routes (docs/rules.md).

Field shapes are checked here (422 VALIDATION_FAILED); whether the fields fit together (a channel or an
event, the thresholds an operator needs, commands valid for their device) is checked by the service
(422 RULE_INVALID), also for the merged result of a PATCH.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from waystation.devices.schemas import DEVICE_ID_PATTERN
from waystation.oplog.schemas import Level
from waystation.rules.engine import Operator
from waystation.telemetry.schemas import CHANNEL_ID_PATTERN

MAX_ACTIONS = 10
MAX_FOR_SECONDS = 86_400.0  # a day: longer holds are better served by rollups than by memory
MAX_COOLDOWN_SECONDS = 7 * 86_400.0
DEFAULT_COOLDOWN_SECONDS = 60.0

ChannelId = Annotated[str, Field(pattern=CHANNEL_ID_PATTERN, max_length=200)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, max_length=64)]
# A device event's `data.action` (or its kind): printable text, since devices choose it.
EventName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
Severity = Literal["info", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class WebhookAction(_Strict):
    """Publish `rule.fired`: webhook endpoints of the rule's station subscribed to it get a delivery."""

    type: Literal["webhook"]


class LogAction(_Strict):
    """Write an operations-log entry (source `rule`)."""

    type: Literal["log"]
    level: Level = "warning"
    message: str | None = Field(default=None, min_length=1, max_length=2000)  # placeholders allowed


class CommandAction(_Strict):
    """Send a command to a device of the rule's station."""

    type: Literal["command"]
    device_id: DeviceId
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)


class AlertAction(_Strict):
    """Raise an alert (`GET /api/v1/alerts`), or bump the rule's active one."""

    type: Literal["alert"]
    severity: Severity = "warning"
    message: str | None = Field(default=None, min_length=1, max_length=500)


Action = Annotated[WebhookAction | LogAction | CommandAction | AlertAction, Field(discriminator="type")]


class RuleCreate(_Strict):
    name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=500)
    station_id: str | None = Field(default=None, min_length=1, max_length=32)  # default: the default station
    enabled: bool = True
    channel: ChannelId | None = None
    event: EventName | None = None
    device_id: DeviceId | None = None
    operator: Operator | None = None
    threshold: float | None = None
    threshold_high: float | None = None
    for_seconds: float = Field(default=0.0, ge=0, le=MAX_FOR_SECONDS)
    cooldown_seconds: float = Field(default=DEFAULT_COOLDOWN_SECONDS, ge=0, le=MAX_COOLDOWN_SECONDS)
    actions: list[Action] = Field(min_length=1, max_length=MAX_ACTIONS)


class RuleUpdate(_Strict):
    """Every field optional; `null` clears the nullable ones (`channel`, `event`, `device_id`, `operator`,
    `threshold`, `threshold_high`). The station cannot change."""

    name: str | None = Field(default=None, min_length=1, max_length=120)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None
    channel: ChannelId | None = None
    event: EventName | None = None
    device_id: DeviceId | None = None
    operator: Operator | None = None
    threshold: float | None = None
    threshold_high: float | None = None
    for_seconds: float | None = Field(default=None, ge=0, le=MAX_FOR_SECONDS)
    cooldown_seconds: float | None = Field(default=None, ge=0, le=MAX_COOLDOWN_SECONDS)
    actions: list[Action] | None = Field(default=None, min_length=1, max_length=MAX_ACTIONS)


class RuleOut(BaseModel):
    id: int
    station_id: str
    name: str
    description: str
    enabled: bool
    channel: str | None
    event: str | None
    device_id: str | None
    operator: str | None
    threshold: float | None
    threshold_high: float | None
    for_seconds: float
    cooldown_seconds: float
    actions: list[dict[str, Any]]
    last_fired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class RulePage(BaseModel):
    items: list[RuleOut]
    next_cursor: str | None


class FiringOut(BaseModel):
    id: int
    rule_id: int
    ts: datetime
    reading_ts: datetime | None
    value: float | None
    channel: str | None
    device_id: str | None
    status: str  # running | ok | partial | failed
    outcomes: list[dict[str, Any]]


class FiringPage(BaseModel):
    items: list[FiringOut]
    next_cursor: str | None


class AlertOut(BaseModel):
    id: int
    station_id: str
    rule_id: int | None
    rule_name: str
    severity: str
    message: str
    value: float | None
    channel: str | None
    device_id: str | None
    status: str  # active | acknowledged
    count: int
    raised_at: datetime
    last_raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None
