"""Request and response bodies of the dashboard routes, and the config of each widget kind."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from waystation.devices.schemas import DEVICE_ID_PATTERN
from waystation.oplog.schemas import SOURCE_PATTERN, Level
from waystation.telemetry.schemas import CHANNEL_ID_PATTERN

WidgetKind = Literal["line_chart", "gauge", "stat", "device_control", "event_list"]
MAX_WIDGETS = 100  # per dashboard; a page with more is unreadable and slow to render
MAX_COLUMNS = 48

ChannelId = Annotated[str, Field(pattern=CHANNEL_ID_PATTERN, max_length=200)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_bounds(low: float | None, high: float | None) -> None:
    if low is not None and high is not None and low >= high:
        raise ValueError("'min' must be less than 'max'")


class LineChartConfig(_Config):
    """Lines of one or more channels over a moving window ending now."""

    channels: list[ChannelId] = Field(min_length=1, max_length=8)
    range: Literal["15m", "1h", "6h", "24h", "7d", "30d"] = "24h"
    bucket: Literal["auto", "1m", "1h", "1d"] = "auto"
    min: float | None = None  # fixed y axis; each side free when None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> LineChartConfig:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("'channels' lists a channel twice")
        _check_bounds(self.min, self.max)
        return self


class GaugeConfig(_Config):
    """The latest value of one channel on a dial from `min` to `max`."""

    channel: ChannelId
    min: float
    max: float
    unit: str | None = Field(default=None, max_length=16)  # shown instead of the channel's own unit
    decimals: int = Field(default=1, ge=0, le=6)

    @model_validator(mode="after")
    def _check(self) -> GaugeConfig:
        _check_bounds(self.min, self.max)
        return self


class StatConfig(_Config):
    """The latest value of one channel as a big number; outside [min, max] it is shown as a warning."""

    channel: ChannelId
    min: float | None = None
    max: float | None = None
    unit: str | None = Field(default=None, max_length=16)
    decimals: int = Field(default=1, ge=0, le=6)

    @model_validator(mode="after")
    def _check(self) -> StatConfig:
        _check_bounds(self.min, self.max)
        return self


class DeviceControlConfig(_Config):
    """Buttons for a device's commands; `actions` limits them (None: every command of its type)."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    actions: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=32
    )


class EventListConfig(_Config):
    """The newest operations-log entries of the dashboard's station, filtered."""

    min_level: Level = "info"
    sources: list[Annotated[str, Field(pattern=SOURCE_PATTERN)]] = Field(default_factory=list, max_length=10)
    device_id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    limit: int = Field(default=20, ge=1, le=100)


CONFIG_MODELS: dict[str, type[_Config]] = {
    "line_chart": LineChartConfig,
    "gauge": GaugeConfig,
    "stat": StatConfig,
    "device_control": DeviceControlConfig,
    "event_list": EventListConfig,
}


class DashboardLayout(BaseModel):
    """Grid settings of the whole page; widget positions are in grid cells."""

    model_config = ConfigDict(extra="forbid")
    columns: int = Field(default=12, ge=1, le=MAX_COLUMNS)
    row_height: int = Field(default=80, ge=10, le=400)  # pixels


class Position(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int = Field(ge=0, lt=MAX_COLUMNS)
    y: int = Field(ge=0, le=10_000)
    w: int = Field(ge=1, le=MAX_COLUMNS)
    h: int = Field(ge=1, le=100)


class DashboardCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)
    station_id: str | None = Field(default=None, max_length=32)
    shared: bool = False
    layout: DashboardLayout = Field(default_factory=DashboardLayout)


class DashboardUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=120)
    shared: bool | None = None
    layout: DashboardLayout | None = None


class WidgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: WidgetKind
    title: str = Field(default="", max_length=120)
    position: Position
    config: dict[str, Any]  # checked against the kind's model (WIDGET_CONFIG_INVALID)


class WidgetUpdate(BaseModel):
    """The kind never changes (delete the widget and add another); a new `config` replaces the old."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, max_length=120)
    position: Position | None = None
    config: dict[str, Any] | None = None


class WidgetPlacement(Position):
    id: int = Field(ge=1, le=2**31 - 1)


class LayoutUpdate(BaseModel):
    """Every widget of the dashboard with its new place, and optionally new grid settings."""

    model_config = ConfigDict(extra="forbid")
    widgets: list[WidgetPlacement] = Field(max_length=MAX_WIDGETS)
    layout: DashboardLayout | None = None


class WidgetOut(BaseModel):
    id: int
    dashboard_id: int
    kind: WidgetKind
    title: str
    position: Position
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class DashboardSummary(BaseModel):
    id: int
    station_id: str
    name: str
    shared: bool
    owner_id: int | None
    layout: DashboardLayout
    created_at: datetime
    updated_at: datetime


class DashboardOut(DashboardSummary):
    widgets: list[WidgetOut]
