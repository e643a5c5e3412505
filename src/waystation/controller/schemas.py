"""Request and response bodies of the controller routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A controller id is the `{name}` of its `controller:{name}/{key}` channels.
CONTROLLER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # plugin instances and plugin names
KEY_PATTERN = r"^[^/\s]{1,64}$"  # channel keys and plugin channel ids

Direction = Literal["input", "output"]


class ControllerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=CONTROLLER_ID_PATTERN)
    name: str | None = Field(default=None, min_length=1, max_length=120)
    station_id: str | None = Field(default=None, max_length=32)


class ControllerUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)


class ControllerOut(BaseModel):
    id: str
    station_id: str
    name: str
    token_prefix: str
    created_by: str | None
    created_at: datetime
    last_connected_at: datetime | None
    connected: bool
    connected_since: datetime | None
    # The last status the controller reported over its WebSocket (plugin health, buffer), if connected.
    status: dict[str, Any] | None


class ControllerCreated(ControllerOut):
    token: str


class ControllerToken(BaseModel):
    id: str
    token_prefix: str
    token: str


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    plugin: str = Field(pattern=NAME_PATTERN)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    interval_seconds: float = Field(default=1.0, ge=0.01, le=86_400)


class InstanceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plugin: str | None = Field(default=None, pattern=NAME_PATTERN)
    config: dict[str, Any] | None = None
    enabled: bool | None = None
    interval_seconds: float | None = Field(default=None, ge=0.01, le=86_400)


class InstanceOut(BaseModel):
    id: int
    controller_id: str
    name: str
    plugin: str
    config: dict[str, Any]
    enabled: bool
    interval_seconds: float
    created_at: datetime
    updated_at: datetime


class _Range(BaseModel):
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be greater than max")
        return self


class MappingCreate(_Range):
    model_config = ConfigDict(extra="forbid")
    instance: str = Field(pattern=NAME_PATTERN)
    plugin_channel: str = Field(pattern=KEY_PATTERN)
    key: str | None = Field(default=None, pattern=KEY_PATTERN)  # default: the plugin channel id
    unit: str | None = Field(default=None, max_length=16)
    direction: Direction = "input"


class MappingUpdate(_Range):
    model_config = ConfigDict(extra="forbid")
    key: str | None = Field(default=None, pattern=KEY_PATTERN)
    unit: str | None = Field(default=None, max_length=16)
    direction: Direction | None = None


class MappingOut(BaseModel):
    id: int
    controller_id: str
    instance: str
    plugin_channel: str
    key: str
    channel: str  # the station channel: controller:{controller_id}/{key}
    unit: str | None
    direction: Direction
    min: float | None
    max: float | None
    created_at: datetime
    updated_at: datetime


class ChannelWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float = Field(strict=True, allow_inf_nan=False)  # a bool is not a number


class ChannelWriteResult(BaseModel):
    channel: str
    value: float
    controller_id: str
