"""`system`: the controller machine's own CPU, memory and disk use, and a temperature when the machine
has a sensor psutil can read (a Raspberry Pi's `cpu_thermal`, a PC's `coretemp`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from waystation.plugins.sdk import ChannelDescriptor, DevicePlugin, Health, PluginConfigError, Reading


class SystemConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disk_path: str = Field(default="/", min_length=1, max_length=4096)  # whose file system `disk` measures
    temperature_sensor: str | None = Field(default=None, max_length=64)  # psutil's name; default: the first


def _temperatures() -> dict[str, list[Any]]:
    read = getattr(psutil, "sensors_temperatures", None)  # missing on macOS and Windows
    if read is None:
        return {}
    try:
        return dict(read())
    except (OSError, RuntimeError):
        return {}


class SystemPlugin(DevicePlugin):
    """Channels `cpu`, `memory`, `disk` (percent) and, if a sensor exists, `temperature` (°C)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        try:
            self._cfg = SystemConfig.model_validate(self.config)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PluginConfigError(
                f"{'.'.join(str(p) for p in first['loc']) or 'config'}: {first['msg']}"
            ) from exc
        self._sensor = self._pick_sensor()
        self._descriptors = [
            ChannelDescriptor("cpu", unit="%", min=0, max=100, description="CPU use since the last read"),
            ChannelDescriptor("memory", unit="%", min=0, max=100, description="memory in use"),
            ChannelDescriptor("disk", unit="%", min=0, max=100, description=f"{self._cfg.disk_path} used"),
        ]
        if self._sensor is not None:
            self._descriptors.append(
                ChannelDescriptor("temperature", unit="°C", min=-273.15, description=f"sensor {self._sensor}")
            )
        self._error = ""

    def _pick_sensor(self) -> str | None:
        sensors = {name: entries for name, entries in _temperatures().items() if entries}
        if self._cfg.temperature_sensor is not None:
            if self._cfg.temperature_sensor not in sensors:
                known = ", ".join(sorted(sensors)) or "none"
                raise PluginConfigError(
                    f"no temperature sensor {self._cfg.temperature_sensor!r} (this machine has: {known})"
                )
            return self._cfg.temperature_sensor
        return next(iter(sorted(sensors)), None)

    def channels(self) -> list[ChannelDescriptor]:
        return list(self._descriptors)

    async def connect(self) -> None:
        if not await asyncio.to_thread(Path(self._cfg.disk_path).exists):
            raise PluginConfigError(f"disk_path {self._cfg.disk_path!r} does not exist")
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    async def read(self) -> list[Reading]:
        # psutil reads /proc and /sys: quick, but blocking, so off the event loop.
        return await asyncio.to_thread(self._read_blocking)

    def _read_blocking(self) -> list[Reading]:
        now = datetime.now(UTC)
        try:
            readings = [
                Reading("cpu", min(100.0, max(0.0, float(psutil.cpu_percent(interval=None)))), now),
                Reading("memory", float(psutil.virtual_memory().percent), now),
                Reading("disk", float(psutil.disk_usage(self._cfg.disk_path).percent), now),
            ]
            if self._sensor is not None:
                entries = _temperatures().get(self._sensor) or []
                if entries:
                    readings.append(Reading("temperature", float(entries[0].current), now))
        except OSError as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            raise
        self._error = ""
        return readings

    async def health(self) -> Health:
        return Health(
            ok=not self._error,
            message=self._error or "reading",
            details={"temperature_sensor": self._sensor or "none"},
        )
