"""Request and response bodies of the operations-log routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from waystation.devices.schemas import DEVICE_ID_PATTERN

Level = Literal["debug", "info", "warning", "error"]
LEVELS: tuple[Level, ...] = ("debug", "info", "warning", "error")  # in rising severity
# Sources are short lowercase words; slices may add their own (`rule`, `ota`, `flow`, …).
SOURCE_PATTERN = r"^[a-z][a-z0-9_.-]{0,31}$"
MAX_MESSAGE_CHARS = 2000


class NoteCreate(BaseModel):
    """A manual note (`POST /api/v1/log`); it is stored with source `user` and the caller as actor."""

    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    level: Level = "info"
    station_id: str | None = Field(default=None, max_length=32)
    device_id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)


class LogEntryOut(BaseModel):
    id: int
    ts: datetime
    level: Level
    source: str
    message: str
    related: dict[str, Any]
    station_id: str | None
    actor: str | None
