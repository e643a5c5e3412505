"""Request and response bodies of the device routes (PROTOCOLS §12)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Device ids appear in MQTT topics: no '/', '+', '#', no spaces.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    type: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=120)
    zone: str | None = Field(default=None, max_length=120)
    station_id: str | None = Field(default=None, max_length=32)


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=120)
    zone: str | None = Field(default=None, max_length=120)
    enabled: bool | None = None  # false removes the device's broker access and disconnects it


class DeviceOut(BaseModel):
    id: str
    station_id: str
    type: str
    name: str
    zone: str | None
    status: Literal["online", "offline", "unknown"]
    last_seen: datetime | None
    firmware_version: str | None
    chip: str | None
    state: dict[str, Any]
    enabled: bool = True
    created_at: datetime


class MqttAccessOut(BaseModel):
    """How a device reaches the broker (PROTOCOLS §3 `mqtt`); the password is shown once."""

    host: str
    port: int
    tls: bool
    username: str
    password: str
    client_id: str


class DeviceCreated(DeviceOut):
    device_token: str  # for `X-Device-Token`; shown once
    mqtt: MqttAccessOut  # the device's own broker account; shown once


class DeviceTokenOut(BaseModel):
    device_id: str
    device_token: str


class CommandOut(BaseModel):
    request_id: str
    device_id: str
    action: str
    params: dict[str, Any]
    status: Literal["queued", "sent", "accepted", "applied", "failed", "timeout"]
    error: str | None
    created_at: datetime
    sent_at: datetime | None
    acked_at: datetime | None
    expires_at: datetime


class EventOut(BaseModel):
    id: int
    device_id: str
    ts: datetime
    kind: str
    data: dict[str, Any]


class DeviceTypeOut(BaseModel):
    id: str
    name: str
    capabilities: list[str]
    commands: dict[str, Any]
    builtin: bool
