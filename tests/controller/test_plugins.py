"""The plugin SDK's conformance test on the built-ins and on a deliberately broken plugin, the simulated
plugin's waveforms, and the controller's disk buffer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from waystation.controller.buffer import DiskBuffer
from waystation.plugins import ChannelDescriptor, DevicePlugin, Health, PluginConfigError, Reading
from waystation.plugins.conformance import assert_conforms, check_plugin
from waystation.plugins.registry import discover
from waystation.plugins.simulated import SimulatedPlugin
from waystation.plugins.system import SystemPlugin


def test_builtins_are_registered_as_entry_points() -> None:
    plugins, failed = discover()
    assert plugins["simulated"] is SimulatedPlugin
    assert plugins["system"] is SystemPlugin
    assert failed == {}


async def test_simulated_plugin_conforms_with_its_defaults() -> None:
    report = await assert_conforms(lambda: SimulatedPlugin({}))
    assert report.checks > 20


async def test_simulated_plugin_conforms_with_every_waveform() -> None:
    config = {
        "seed": 7,
        "channels": [
            {"id": "s", "waveform": "sine", "period": 0.5, "amplitude": 2, "offset": 10},
            {"id": "w", "waveform": "random_walk", "min": -1, "max": 1, "step": 5},
            {"id": "st", "waveform": "step", "period": 0.01, "low": 3, "high": -3},
            {"id": "c", "waveform": "constant", "value": 42},
            {"id": "out", "waveform": "output", "min": 10, "max": 20, "initial": 15, "safe": 10},
        ],
    }
    await assert_conforms(lambda: SimulatedPlugin(config), reads=20)


async def test_system_plugin_conforms() -> None:
    await assert_conforms(lambda: SystemPlugin({}))


async def test_simulated_values_are_reproducible_and_outputs_keep_writes() -> None:
    config = {"seed": 3, "channels": [{"id": "w", "waveform": "random_walk", "min": 0, "max": 10}]}
    a, b = SimulatedPlugin(config), SimulatedPlugin(config)
    seq_a = [(await a.read())[0].value for _ in range(20)]
    seq_b = [(await b.read())[0].value for _ in range(20)]
    assert seq_a == seq_b and len(set(seq_a)) > 5
    assert all(0 <= v <= 10 for v in seq_a)
    other = SimulatedPlugin({**config, "seed": 4})
    assert [(await other.read())[0].value for _ in range(20)] != seq_a

    sim = SimulatedPlugin({})
    await sim.write("heater", 40)
    assert {r.channel: r.value for r in await sim.read()}["heater"] == 40
    await sim.safe_state()
    assert {r.channel: r.value for r in await sim.read()}["heater"] == 0
    # A sine is a function of the reading's time.
    reading = next(r for r in await sim.read() if r.channel == "temperature")
    assert reading.ts is not None
    expected = 21 + 3 * math.sin(2 * math.pi * reading.ts.timestamp() / 300)
    assert reading.value == pytest.approx(expected, abs=1e-5)


def test_invalid_simulated_config_is_a_clear_error() -> None:
    with pytest.raises(PluginConfigError, match="random walk needs min and max"):
        SimulatedPlugin({"channels": [{"id": "w", "waveform": "random_walk"}]})
    with pytest.raises(PluginConfigError, match=r"channels\.0\.waveform"):
        SimulatedPlugin({"channels": [{"id": "x", "waveform": "triangle"}]})
    with pytest.raises(PluginConfigError, match="unique"):
        SimulatedPlugin({"channels": [{"id": "x"}, {"id": "x"}]})


class BrokenPlugin(DevicePlugin):
    """Everything the conformance test exists to catch."""

    def channels(self) -> list[ChannelDescriptor]:
        return [
            ChannelDescriptor("temp", unit="°C", min=0, max=50),
            ChannelDescriptor("bad/id"),
            ChannelDescriptor("valve", direction="output", min=0, max=1),
        ]

    async def read(self) -> list[Reading]:
        return [Reading("temp", 99.0), Reading("ghost", 1.0), Reading("valve", math.nan)]

    async def write(self, channel: str, value: float) -> None:
        self.last = (channel, value)  # accepts anything: inputs, unknown channels, out of range

    async def health(self) -> Health:
        return {"ok": True}  # type: ignore[return-value]


async def test_conformance_catches_a_broken_plugin() -> None:
    report = await check_plugin(lambda: BrokenPlugin())
    assert not report.ok
    text = "\n".join(report.problems)
    for expected in (
        "'bad/id' must be 1-64 characters",
        "health() must return a Health",
        "'temp' = 99.0 is outside its range",
        "channel 'ghost', which channels() does not list",
        "'valve' has value nan, not a finite number",
        "a write to an unknown channel was accepted",
        "a write to input channel 'temp' was accepted",
        "writing 2.0 to 'valve' (range 0 to 1) was accepted",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    with pytest.raises(AssertionError, match="problem"):
        await assert_conforms(lambda: BrokenPlugin())


async def test_conformance_reports_a_factory_that_fails() -> None:
    report = await check_plugin(lambda: SimulatedPlugin({"seed": "x"}))
    assert not report.ok and "PluginConfigError" in report.problems[0]


async def test_conformance_catches_a_safe_state_that_is_not_idempotent() -> None:
    class Toggle(SimulatedPlugin):
        async def safe_state(self) -> None:  # creeps instead of settling
            self._outputs["heater"] += 1

    report = await check_plugin(lambda: Toggle({}))
    assert any("safe_state() is not idempotent" in p for p in report.problems), report.problems


# --- the disk buffer ----------------------------------------------------------------------------------


def test_buffer_keeps_order_and_survives_a_restart(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_rows=1000, max_bytes=10**6)
    buf.append([("controller:c/a", i, float(i)) for i in range(10)])
    first = buf.peek(4)
    assert [b.ts_us for b in first] == [0, 1, 2, 3]
    buf.remove(first)
    buf.close()

    again = DiskBuffer(tmp_path, max_rows=1000, max_bytes=10**6)
    assert again.rows == 6
    assert [b.ts_us for b in again.peek(100)] == [4, 5, 6, 7, 8, 9]
    assert again.counters("produced") == {"controller:c/a": 10}
    assert again.total("acked") == 4
    again.close()


def test_full_buffer_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_rows=100, max_bytes=10**6)
    for start in range(0, 250, 50):
        buf.append([("controller:c/a", i, float(i)) for i in range(start, start + 50)])
    assert buf.rows == 100
    assert [b.ts_us for b in buf.peek(1000)] == list(range(150, 250))
    assert buf.counters("dropped") == {"controller:c/a": 150}

    by_bytes = DiskBuffer(tmp_path / "b", max_rows=10**6, max_bytes=100 * (len("controller:c/a") + 40))
    by_bytes.append([("controller:c/a", i, 0.0) for i in range(130)])
    assert by_bytes.rows == 100 and by_bytes.peek(1)[0].ts_us == 30
    assert by_bytes.total("dropped") == 30


def test_removing_a_batch_part_of_which_was_dropped_meanwhile(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_rows=100, max_bytes=10**6)
    buf.append([("controller:c/a", i, 0.0) for i in range(100)])
    in_flight = buf.peek(50)
    buf.append([("controller:c/a", i, 0.0) for i in range(100, 130)])  # drops 0..29, in flight
    buf.remove(in_flight)  # 30..49 are still there and go; 0..29 were dropped already
    assert buf.rows == 80
    assert [b.ts_us for b in buf.peek(1000)] == list(range(50, 130))
    assert buf.total("acked") == 20 and buf.total("dropped") == 30
