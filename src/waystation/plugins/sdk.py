"""The plugin SDK: what a device plugin is, and the few types it exchanges with the controller.

A plugin talks to one piece of hardware (or a simulation of it) and knows nothing about the station:

    class Thermometer(DevicePlugin):
        def channels(self) -> list[ChannelDescriptor]:
            return [ChannelDescriptor("temperature", unit="°C", min=-40, max=125)]

        async def read(self) -> list[Reading]:
            return [Reading("temperature", await self._sensor.celsius())]

The controller (`waystation controller`) creates one object per configured plugin instance with that
instance's config, calls `connect()` once, `read()` at the instance's interval, `write()` when someone
writes one of its output channels, `health()` for the status it reports, and `safe_state()` on shutdown
and whenever the station is lost, then `close()`. It never calls two methods of one plugin object at
the same time, so a plugin needs no locking of its own.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Direction = Literal["input", "output"]

#: A plugin channel id: what a station channel key may be (no `/`, no whitespace, 1-64 characters).
CHANNEL_ID = re.compile(r"^[^/\s]{1,64}$")


class PluginError(Exception):
    """A plugin cannot do what was asked; the message is shown to people (keep secrets out of it)."""


class PluginConfigError(PluginError):
    """The instance's config is not valid for this plugin."""


class WriteRefused(PluginError):
    """A write to an unknown channel, an input channel, or with a value outside the channel's range."""


@dataclass(frozen=True, slots=True)
class ChannelDescriptor:
    """One channel a plugin offers. `min`/`max` bound the values it reads and accepts (None: unbounded)."""

    id: str
    unit: str | None = None
    direction: Direction = "input"
    min: float | None = None
    max: float | None = None
    description: str = ""

    def in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel. `ts` (timezone-aware) is when it was measured; None means "now" (the
    controller stamps it). Give `ts` when the value is a function of time, so it is reproducible."""

    channel: str
    value: float
    ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """What `health()` answers: working or not, a short message for people, and a few numbers or words."""

    ok: bool
    message: str = ""
    details: Mapping[str, float | int | str | bool] = field(default_factory=dict)


class DevicePlugin(abc.ABC):
    """Base class of every device plugin. Subclasses implement `channels()` and `read()`; plugins with
    output channels also `write()` and `safe_state()`."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        """Validate `config` here and raise `PluginConfigError` with a clear message if it is wrong."""
        self.config: dict[str, Any] = dict(config or {})

    @abc.abstractmethod
    def channels(self) -> list[ChannelDescriptor]:
        """The channels this instance offers (may depend on its config; asked again after `connect()`)."""

    async def connect(self) -> None:  # noqa: B027 - optional hook: most plugins have nothing to open
        """Open the hardware. Raise `PluginError` if it is not there; the controller retries later."""

    @abc.abstractmethod
    async def read(self) -> list[Reading]:
        """The current values: any subset of the channels, each within its range."""

    async def write(self, channel: str, value: float) -> None:
        """Set an output channel. The default refuses everything: a plugin without outputs needs nothing."""
        self.check_writable(channel, value)
        raise WriteRefused(f"{type(self).__name__} has no writable channels.")

    async def health(self) -> Health:
        return Health(ok=True)

    async def safe_state(self) -> None:  # noqa: B027 - optional hook: only plugins with outputs need it
        """Put every output in its safe state (heater off, valve closed). Must be idempotent: it is
        called on every loss of the station and on shutdown, possibly several times in a row."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the hardware. Called once, after `safe_state()`."""

    # --- helpers for subclasses -------------------------------------------------------------------

    def descriptor(self, channel: str) -> ChannelDescriptor | None:
        for desc in self.channels():
            if desc.id == channel:
                return desc
        return None

    def check_writable(self, channel: str, value: float) -> ChannelDescriptor:
        """Call first in `write()`: refuses unknown and input channels and values outside the range."""
        desc = self.descriptor(channel)
        if desc is None:
            raise WriteRefused(f"No channel {channel!r}.")
        if desc.direction != "output":
            raise WriteRefused(f"Channel {channel!r} is an input; only outputs can be written.")
        if isinstance(value, bool) or not isinstance(value, int | float) or not desc.in_range(float(value)):
            raise WriteRefused(f"{value!r} is outside the range of {channel!r} ({desc.min} to {desc.max}).")
        return desc
