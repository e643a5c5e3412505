"""`simulated`: channels with waveforms (sine, random walk, step, constant) and output channels that keep
what is written to them. For demos, tests and trying mappings without hardware.

Values are a function of the reading's time (sine, step) or of the seed and the number of reads
(random walk), so a run can be reproduced.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from waystation.plugins.sdk import (
    CHANNEL_ID,
    ChannelDescriptor,
    DevicePlugin,
    Health,
    PluginConfigError,
    Reading,
)

Waveform = Literal["sine", "random_walk", "step", "constant", "output"]


class SimChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    waveform: Waveform = "sine"
    unit: str | None = Field(default=None, max_length=16)
    period: float = Field(default=60.0, gt=0)  # sine and step: seconds per cycle
    amplitude: float = Field(default=1.0, ge=0)  # sine: peak distance from `offset`
    offset: float = 0.0  # sine: the middle value
    value: float = 0.0  # constant
    step: float = Field(default=1.0, ge=0)  # random walk: largest change per read
    start: float | None = None  # random walk: first value (default: middle of the range)
    low: float = 0.0  # step: the two levels
    high: float = 1.0
    min: float | None = None  # range; defaults follow from the waveform
    max: float | None = None
    initial: float | None = None  # output: value before any write (default: min, or 0)
    safe: float | None = None  # output: value of the safe state (default: initial)

    @model_validator(mode="after")
    def _check(self) -> SimChannel:
        if not CHANNEL_ID.match(self.id):
            raise ValueError(f"channel id {self.id!r} must not contain '/' or whitespace")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"channel {self.id!r}: min is greater than max")
        if self.waveform == "random_walk" and (self.min is None or self.max is None):
            raise ValueError(f"channel {self.id!r}: a random walk needs min and max")
        return self


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    channels: list[SimChannel] = Field(default_factory=list, max_length=200)


DEFAULT_CHANNELS: list[dict[str, Any]] = [
    {"id": "temperature", "waveform": "sine", "unit": "°C", "offset": 21.0, "amplitude": 3.0, "period": 300},
    {
        "id": "humidity",
        "waveform": "random_walk",
        "unit": "%",
        "min": 20,
        "max": 80,
        "start": 45,
        "step": 0.5,
    },
    {"id": "door", "waveform": "step", "low": 0, "high": 1, "period": 120},
    {"id": "supply", "waveform": "constant", "unit": "V", "value": 12.0},
    {"id": "heater", "waveform": "output", "unit": "%", "min": 0, "max": 100, "initial": 0},
]


class SimulatedPlugin(DevicePlugin):
    """Config: `{"seed": 0, "channels": [{"id": "t", "waveform": "sine", ...}, ...]}` (see docs/plugins.md);
    without `channels`, a default set of five channels, one of them the output `heater`."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        try:
            parsed = SimConfig.model_validate(self.config)
            if not parsed.channels:
                parsed.channels = [SimChannel.model_validate(c) for c in DEFAULT_CHANNELS]
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "config"
            raise PluginConfigError(f"{where}: {first['msg']}") from exc
        ids = [c.id for c in parsed.channels]
        if len(set(ids)) != len(ids):
            raise PluginConfigError("channel ids must be unique")
        self._spec = {c.id: c for c in parsed.channels}
        self._descriptors = [self._describe(c) for c in parsed.channels]
        # One generator per random-walk channel, seeded from the config seed and the channel id, so
        # adding a channel does not change the others' sequences.
        self._rngs = {
            c.id: random.Random(parsed.seed * 1_000_003 + zlib.crc32(c.id.encode()))
            for c in parsed.channels
            if c.waveform == "random_walk"
        }
        self._walk: dict[str, float] = {}
        self._outputs: dict[str, float] = {}
        for c in parsed.channels:
            if c.waveform == "random_walk":
                lo, hi = float(c.min), float(c.max)  # type: ignore[arg-type]  # checked by the model
                self._walk[c.id] = min(hi, max(lo, c.start if c.start is not None else (lo + hi) / 2))
            elif c.waveform == "output":
                self._outputs[c.id] = self._initial(c)
        self.connected = False
        self.reads = 0
        self.writes: list[tuple[str, float]] = []  # every accepted write, for tests and demos

    @staticmethod
    def _initial(c: SimChannel) -> float:
        if c.initial is not None:
            return c.initial
        return c.min if c.min is not None else 0.0

    @staticmethod
    def _describe(c: SimChannel) -> ChannelDescriptor:
        lo, hi = c.min, c.max
        if c.waveform == "sine":
            lo = c.offset - c.amplitude if lo is None else lo
            hi = c.offset + c.amplitude if hi is None else hi
        elif c.waveform == "step":
            lo = min(c.low, c.high) if lo is None else lo
            hi = max(c.low, c.high) if hi is None else hi
        elif c.waveform == "constant":
            lo = c.value if lo is None else lo
            hi = c.value if hi is None else hi
        direction: Literal["input", "output"] = "output" if c.waveform == "output" else "input"
        return ChannelDescriptor(c.id, unit=c.unit, direction=direction, min=lo, max=hi)

    def channels(self) -> list[ChannelDescriptor]:
        return list(self._descriptors)

    async def connect(self) -> None:
        self.connected = True

    async def read(self) -> list[Reading]:
        now = datetime.now(UTC)
        t = now.timestamp()
        self.reads += 1
        readings: list[Reading] = []
        for desc in self._descriptors:
            c = self._spec[desc.id]
            if c.waveform == "sine":
                value = c.offset + c.amplitude * math.sin(2 * math.pi * t / c.period)
            elif c.waveform == "step":
                value = c.high if int(t // (c.period / 2)) % 2 else c.low
            elif c.waveform == "constant":
                value = c.value
            elif c.waveform == "random_walk":
                step = self._rngs[c.id].uniform(-c.step, c.step)
                value = min(float(desc.max), max(float(desc.min), self._walk[c.id] + step))  # type: ignore[arg-type]
                self._walk[c.id] = value
            else:
                value = self._outputs[c.id]
            # Six decimals keep stored values readable; clamp afterwards, because rounding (or float
            # error in a sine) can push a value a hair past its bound and the range is a promise.
            value = round(value, 6)
            if desc.min is not None:
                value = max(desc.min, value)
            if desc.max is not None:
                value = min(desc.max, value)
            readings.append(Reading(desc.id, value, now))
        return readings

    async def write(self, channel: str, value: float) -> None:
        self.check_writable(channel, value)
        self._outputs[channel] = float(value)
        self.writes.append((channel, float(value)))

    async def safe_state(self) -> None:
        for cid in self._outputs:
            c = self._spec[cid]
            self._outputs[cid] = c.safe if c.safe is not None else self._initial(c)

    async def health(self) -> Health:
        return Health(
            ok=self.connected,
            message="simulating" if self.connected else "not connected",
            details={"channels": len(self._descriptors), "reads": self.reads},
        )

    async def close(self) -> None:
        self.connected = False
