"""Request and response bodies of the telemetry routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

CHANNEL_ID_PATTERN = r"^(device|flow|controller):[A-Za-z0-9][A-Za-z0-9_.-]{0,119}/[^/\s]{1,64}$"


class ChannelOut(BaseModel):
    id: str
    kind: str
    station_id: str | None
    source_id: str
    key: str
    unit: str | None
    last_value: float | None
    last_ts: datetime | None
    raw_retention_days: int | None
    rollup_1m_retention_days: int | None
    rollup_1h_retention_days: int | None


class ChannelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit: str | None = Field(default=None, max_length=16)
    raw_retention_days: int | None = Field(default=None, ge=1, le=36500)
    rollup_1m_retention_days: int | None = Field(default=None, ge=1, le=36500)
    rollup_1h_retention_days: int | None = Field(default=None, ge=1, le=36500)


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    channel: str = Field(pattern=CHANNEL_ID_PATTERN)
    value: float = Field(strict=True, allow_inf_nan=False)  # a bool is not a number
    ts: datetime | None = None


class BatchRequest(BaseModel):
    items: list[BatchItem] = Field(min_length=1, max_length=500)


class BatchResult(BaseModel):
    received: int
    stored: int
    duplicates: int


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)
    notes: str = Field(default="", max_length=5000)
    station_id: str | None = Field(default=None, max_length=32)


class ExperimentOut(BaseModel):
    id: int
    station_id: str
    name: str
    notes: str
    started_at: datetime
    stopped_at: datetime | None
    running: bool
    created_by: str | None
