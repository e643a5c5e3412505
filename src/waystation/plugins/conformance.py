"""The conformance test every device plugin should pass, for plugin authors and for the built-ins.

    from waystation.plugins.conformance import assert_conforms

    async def test_my_plugin_conforms() -> None:
        await assert_conforms(lambda: MyPlugin({"port": "/dev/ttyUSB0"}))

`check_plugin(factory)` runs every check and returns a report listing the problems found (an empty list
means the plugin conforms); `assert_conforms(factory)` raises `AssertionError` with all of them. The
factory is called once and must return a new, unconnected plugin object.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from waystation.plugins.sdk import CHANNEL_ID, ChannelDescriptor, DevicePlugin, Health, PluginError, Reading

T = TypeVar("T")

PluginFactory = Callable[[], DevicePlugin]


@dataclass
class ConformanceReport:
    plugin: str
    problems: list[str] = field(default_factory=list)
    checks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    def summary(self) -> str:
        if self.ok:
            return f"{self.plugin}: conforms ({self.checks} checks)"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{self.plugin}: {len(self.problems)} problem(s) in {self.checks} checks:\n{lines}"


async def check_plugin(
    factory: PluginFactory, *, reads: int = 3, call_timeout: float = 10.0
) -> ConformanceReport:
    """Exercise a plugin the way the controller does and report everything that does not conform.

    Checks: descriptors are well formed; `connect()` works; `health()` returns a `Health`; `read()`
    returns `Reading`s of known channels with finite values within range; outputs accept an in-range
    value while unknown channels, inputs and out-of-range values are refused with `PluginError`;
    `safe_state()` can be called twice and leaves the outputs the same both times; `close()` works.
    """
    try:
        plugin = factory()
    except Exception as exc:
        report = ConformanceReport("plugin", checks=1)
        report.fail(f"the factory raised {type(exc).__name__}: {exc}")
        return report
    report = ConformanceReport(type(plugin).__name__)

    async def call(what: str, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        report.checks += 1
        try:
            return True, await asyncio.wait_for(awaitable, call_timeout)
        except TimeoutError:
            report.fail(f"{what} did not finish within {call_timeout:g}s")
        except Exception as exc:
            report.fail(f"{what} raised {type(exc).__name__}: {exc}")
        return False, None

    if not isinstance(plugin, DevicePlugin):
        report.fail(f"the factory returned {type(plugin).__name__}, not a DevicePlugin")
        return report
    ok, _ = await call("connect()", plugin.connect())
    if not ok:
        return report  # nothing else can work without a connection
    try:
        descriptors = _check_descriptors(plugin, report)
        await _check_health(plugin, report, call)
        for n in range(max(1, reads)):
            label = f"read() #{n + 1}"
            ok, readings = await call(label, plugin.read())
            if ok:
                _check_readings(readings, descriptors, report, label)
        await _check_writes(plugin, descriptors, report)
        await _check_safe_state(plugin, descriptors, report, call)
    finally:
        await call("close()", plugin.close())
    return report


async def assert_conforms(factory: PluginFactory, **options: Any) -> ConformanceReport:
    """`check_plugin`, raising `AssertionError` listing every problem (for pytest)."""
    report = await check_plugin(factory, **options)
    if not report.ok:
        raise AssertionError(report.summary())
    return report


def _check_descriptors(plugin: DevicePlugin, report: ConformanceReport) -> dict[str, ChannelDescriptor]:
    report.checks += 1
    try:
        descriptors = plugin.channels()
    except Exception as exc:
        report.fail(f"channels() raised {type(exc).__name__}: {exc}")
        return {}
    if not isinstance(descriptors, list) or not descriptors:
        report.fail("channels() must return a non-empty list of ChannelDescriptor")
        return {}
    found: dict[str, ChannelDescriptor] = {}
    for desc in descriptors:
        report.checks += 1
        if not isinstance(desc, ChannelDescriptor):
            report.fail(f"channels() holds {desc!r}, not a ChannelDescriptor")
            continue
        if not isinstance(desc.id, str) or not CHANNEL_ID.match(desc.id):
            report.fail(f"channel id {desc.id!r} must be 1-64 characters without '/' or whitespace")
        if desc.id in found:
            report.fail(f"channel id {desc.id!r} appears twice")
        if desc.direction not in ("input", "output"):
            report.fail(f"channel {desc.id!r}: direction must be 'input' or 'output', not {desc.direction!r}")
        for name in ("min", "max"):
            bound = getattr(desc, name)
            if bound is not None and (isinstance(bound, bool) or not _finite(bound)):
                report.fail(f"channel {desc.id!r}: {name} must be a finite number or None, not {bound!r}")
        if _finite(desc.min) and _finite(desc.max) and desc.min > desc.max:  # type: ignore[operator]
            report.fail(f"channel {desc.id!r}: min {desc.min} is greater than max {desc.max}")
        if desc.unit is not None and (not isinstance(desc.unit, str) or len(desc.unit) > 16):
            report.fail(f"channel {desc.id!r}: unit must be a string of at most 16 characters")
        found[desc.id] = desc
    return found


async def _check_health(
    plugin: DevicePlugin,
    report: ConformanceReport,
    call: Callable[[str, Awaitable[Any]], Awaitable[tuple[bool, Any]]],
) -> None:
    ok, health = await call("health()", plugin.health())
    if not ok:
        return
    if not isinstance(health, Health):
        report.fail(f"health() must return a Health, not {type(health).__name__}")
        return
    if not isinstance(health.ok, bool):
        report.fail(f"Health.ok must be a bool, not {health.ok!r}")
    if not isinstance(health.message, str):
        report.fail(f"Health.message must be a string, not {health.message!r}")
    if not isinstance(health.details, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float | str | bool) for k, v in health.details.items()
    ):
        report.fail("Health.details must map strings to numbers, strings or booleans")


def _check_readings(
    readings: Any, descriptors: Mapping[str, ChannelDescriptor], report: ConformanceReport, label: str
) -> dict[str, float]:
    """Problems with one read()'s result; returns the values of output channels in it."""
    outputs: dict[str, float] = {}
    if not isinstance(readings, list):
        report.fail(f"{label} must return a list of Reading, not {type(readings).__name__}")
        return outputs
    for reading in readings:
        report.checks += 1
        if not isinstance(reading, Reading):
            report.fail(f"{label} returned {reading!r}, not a Reading")
            continue
        desc = descriptors.get(reading.channel)
        if desc is None:
            report.fail(f"{label} returned channel {reading.channel!r}, which channels() does not list")
            continue
        value = reading.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            report.fail(f"{label}: {reading.channel!r} has value {value!r}, not a finite number")
            continue
        if not desc.in_range(float(value)):
            report.fail(
                f"{label}: {reading.channel!r} = {value} is outside its range ({desc.min} to {desc.max})"
            )
        if reading.ts is not None and reading.ts.tzinfo is None:
            report.fail(f"{label}: {reading.channel!r} has a ts without a time zone")
        if desc.direction == "output":
            outputs[reading.channel] = float(value)
    return outputs


def _probe_value(desc: ChannelDescriptor) -> float:
    """A value inside the channel's range."""
    if _finite(desc.min) and _finite(desc.max):
        return (float(desc.min) + float(desc.max)) / 2  # type: ignore[arg-type]
    if _finite(desc.min):
        return float(desc.min)  # type: ignore[arg-type]
    if _finite(desc.max):
        return float(desc.max)  # type: ignore[arg-type]
    return 0.0


async def _expect_refused(plugin: DevicePlugin, report: ConformanceReport, channel: str, value: float) -> str:
    report.checks += 1
    try:
        await plugin.write(channel, value)
    except PluginError:
        return ""
    except Exception as exc:
        return f"raised {type(exc).__name__} instead of PluginError"
    return "was accepted"


async def _check_writes(
    plugin: DevicePlugin, descriptors: Mapping[str, ChannelDescriptor], report: ConformanceReport
) -> None:
    unknown = "conformance-no-such-channel"
    if problem := await _expect_refused(plugin, report, unknown, 0.0):
        report.fail(f"a write to an unknown channel {problem}")
    for desc in descriptors.values():
        probe = _probe_value(desc)
        if desc.direction == "input":
            if problem := await _expect_refused(plugin, report, desc.id, probe):
                report.fail(f"a write to input channel {desc.id!r} {problem}")
            continue
        report.checks += 1
        try:
            await plugin.write(desc.id, probe)
        except Exception as exc:
            report.fail(f"write({desc.id!r}, {probe}) to an output raised {type(exc).__name__}: {exc}")
        for outside in _outside_values(desc):
            if problem := await _expect_refused(plugin, report, desc.id, outside):
                report.fail(f"writing {outside} to {desc.id!r} (range {desc.min} to {desc.max}) {problem}")


def _outside_values(desc: ChannelDescriptor) -> list[float]:
    values = [math.nan]
    if _finite(desc.min):
        values.append(float(desc.min) - 1.0)  # type: ignore[arg-type]
    if _finite(desc.max):
        values.append(float(desc.max) + 1.0)  # type: ignore[arg-type]
    return values


async def _check_safe_state(
    plugin: DevicePlugin,
    descriptors: Mapping[str, ChannelDescriptor],
    report: ConformanceReport,
    call: Callable[[str, Awaitable[Any]], Awaitable[tuple[bool, Any]]],
) -> None:
    after: list[dict[str, float]] = []
    for n in (1, 2):
        ok, _ = await call(f"safe_state() #{n}", plugin.safe_state())
        if not ok:
            return
        label = f"read() after safe_state() #{n}"
        ok, readings = await call(label, plugin.read())
        if ok:
            after.append(_check_readings(readings, descriptors, report, label))
    report.checks += 1
    if len(after) == 2 and after[0] != after[1]:
        report.fail(f"safe_state() is not idempotent: outputs were {after[0]} then {after[1]}")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
