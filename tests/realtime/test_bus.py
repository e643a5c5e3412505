"""The bus: type filters, bounded queues with gap markers, ring-buffer replay."""

from __future__ import annotations

import asyncio

from waystation.bus import Bus, Gap, TypeFilter


def test_type_filter_wildcards() -> None:
    f = TypeFilter.parse("device.*, rule.fired")
    assert f.matches("device.online") and f.matches("rule.fired")
    assert not f.matches("rule.created") and not f.matches("telemetry.batch")
    assert TypeFilter.parse("").matches("anything")


async def test_slow_subscriber_drops_oldest_and_gets_a_gap_marker() -> None:
    bus = Bus()
    sub = bus.subscribe(maxsize=3)
    for i in range(10):
        bus.emit("device.state_changed", {"i": i})
    first = await sub.get()
    assert isinstance(first, Gap) and first.dropped == 7
    rest = [await sub.get() for _ in range(3)]
    assert [e.data["i"] for e in rest] == [7, 8, 9]  # type: ignore[union-attr]


async def test_publish_never_blocks_on_a_stuck_subscriber() -> None:
    bus = Bus()
    bus.subscribe(maxsize=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(50_000):
        bus.emit("x", {"i": i})
    assert loop.time() - start < 2.0


def test_ring_buffer_replays_after_a_sequence_number() -> None:
    bus = Bus(ring_size=5)
    for i in range(8):
        bus.emit("x", {"i": i})
    assert [e.data["i"] for e in bus.replay_after(6)] == [6, 7]
    assert bus.oldest_seq == 4
