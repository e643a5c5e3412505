"""The bus across workers: PostgreSQL LISTEN/NOTIFY (the chosen bridge) against the MQTT broker.

Two workers, "a" and "b", each with its own `waystation.bus.Bus`, in this one process (so both ends
read the same clock). Events are emitted on bus A and recorded when they come out of bus B;
latency = arrival - `Event.ts` (set at emit, carried across by both transports). Transports, run one
after another on the same event payloads:

- `postgresql`: the real `waystation.cluster.bridge.BusBridge` (one NOTIFY per event on
  `waystation_bus`, up to 500 per transaction) on a scratch database `waystation_bench_bus_<pid>`,
  created on 127.0.0.1:5432 and dropped at the end;
- `mqtt_qos1` / `mqtt_qos0`: the alternative, written here (not product code): the same orjson envelope
  published by worker a on `waystation/_bus/a/<type>` and received by every worker on
  `waystation/_bus/+/#`, over the station's own MQTT client (`waystation.mqtt.link.MqttLink`: paho-mqtt
  2.x, MQTT 5, its network thread) and a private Mosquitto on a free loopback port, configured like the
  embedded one (`max_inflight_messages 1000`, `max_queued_messages 100000`);
- `mqtt_qos1_nodelay`: the same at QoS 1 with Nagle's algorithm off on both ends (`set_tcp_nodelay true`
  in a second Mosquitto, TCP_NODELAY on the links' sockets). Neither Mosquitto nor paho turns it off by
  default, and QoS 1's small PUBACKs then wait for delayed ACKs (about 40 ms on Linux).

`mqtt_qos0` is measured only when named (`--transports postgresql,mqtt_qos1,mqtt_qos1_nodelay,mqtt_qos0`):
it adds about 30 s to the run.

The broker bridge is built like the product's: a `local_only` bus subscription on each worker feeds a
send loop, and each worker's receiver drops its own events and publishes the others' into its bus with
`origin` set. It hands paho at most `--mqtt-window` (256) unfinished publishes, the backlog waiting in
the bus queue as `BusBridge`'s does while a transaction is in flight (see `MqttBusBridge`).

Per transport: (a) latency at a fixed rate (default 500 events/s for 20 s), 80 % `device.state`
(~250 bytes of data) and 20 % `telemetry.batch` with 40 items (~3 KB). All transports are up at once
and this phase is cut into `--rounds` (4) slices that the transports take in turn, the order rotating,
so a load elsewhere on the machine falls on all of them alike (`p99_ms_by_round` shows it); (b) a
burst of small events (default 20,000) emitted as fast as possible: events/s received, lost,
duplicated and out-of-order (per sender). The bridge's queue (`cluster_bridge_queue`, and the same
bound in the broker variant) is raised to hold a whole burst, so a burst measures the transport rather
than drop-oldest. The CPU time of this process (both workers and all client threads), of Mosquitto and
of the bridge's PostgreSQL backends is reported per phase. Both workers run in this one process (one
event loop, one GIL) beside PostgreSQL and Mosquitto on the same machine, so the absolute figures are
those of one box, not of a cluster; the comparison is what counts.

    .venv/bin/python bench/bus_bridge.py                       # about 1.5 min
    .venv/bin/python bench/bus_bridge.py --rate 1000 --seconds 10 --burst 50000
    .venv/bin/python bench/bus_bridge.py --quick               # smoke: 1 s at 200/s, 200-event bursts

JSON on stdout and in bench/results/bus-bridge.json (`--output`); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import pwd
import random
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson
import psutil

from _common import (
    BENCH,
    MOSQUITTO,
    Child,
    Children,
    Interrupted,
    free_port,
    log,
    mosquitto_version,
    on_sigterm,
    start_broker,
    wait_port,
)
from waystation.bus import Bus, Event, Gap, TypeFilter
from waystation.cluster.bridge import SEND_BATCH, BusBridge
from waystation.config import MqttEndpoint, Settings
from waystation.mqtt.link import MqttLink
from waystation.mqtt.topics import MessageInfo

PG_ADMIN_URL = os.environ.get("WAYSTATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SMALL = "device.state"
BATCH = "telemetry.batch"
WARMUP = "bench.warmup"
TYPES = (SMALL, BATCH)
BATCH_ITEMS = 40
BATCH_SHARE = 0.2
TOPIC_PREFIX = "waystation/_bus"
EMIT_CHUNK = 1000  # burst: events emitted per loop turn
MQTT_WINDOW = 256  # see MqttBusBridge
STALL_SECONDS = 5.0  # give up waiting for the rest when nothing arrives for this long
TRANSPORTS = ("postgresql", "mqtt_qos1", "mqtt_qos1_nodelay", "mqtt_qos0")
DEFAULT_TRANSPORTS = TRANSPORTS[:3]  # QoS 0 adds about 30 s: `--transports` names it


# --- the events ----------------------------------------------------------------------------------


def small_event(rng: random.Random, run: str, seq: int) -> dict[str, Any]:
    """A `device.state` event (about 250 bytes of data)."""
    n = rng.randrange(1000)
    return {
        "device_id": f"climate-sensor-{n:04d}",
        "name": f"Climate sensor {n}",
        "state": {
            "temperature": round(rng.uniform(15, 30), 2),
            "humidity": round(rng.uniform(20, 80), 2),
            "battery": rng.randrange(101),
            "rssi": -rng.randrange(30, 95),
        },
        "changed": ["temperature", "humidity"],
        "updated_at": datetime.now(UTC).isoformat(),
        "run": run,
        "seq": seq,
    }


def batch_event(rng: random.Random, run: str, seq: int) -> dict[str, Any]:
    """A `telemetry.batch` event as the ingest pipeline emits it: 40 items (about 3 KB)."""
    ts = datetime.now(UTC).isoformat()
    items = [
        {
            "channel": f"sensor-{rng.randrange(1000):04d}.{('temp', 'hum', 'co2', 'lux')[i % 4]}",
            "ts": ts,
            "value": round(rng.uniform(0, 1000), 2),
        }
        for i in range(BATCH_ITEMS)
    ]
    return {"count": len(items), "items": items, "run": run, "seq": seq}


def build_mix(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for seq in range(count):
        if rng.random() < BATCH_SHARE:
            out.append((BATCH, batch_event(rng, "lat", seq)))
        else:
            out.append((SMALL, small_event(rng, "lat", seq)))
    return out


def build_burst(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    return [(SMALL, small_event(rng, "burst", seq)) for seq in range(count)]


def envelope(worker: str, ev: Event) -> bytes:
    """What both transports carry per event (the bridge's own format)."""
    return orjson.dumps({"w": worker, "t": ev.type, "s": ev.station_id, "ts": ev.ts, "d": ev.data})


# --- the receiving end: bus B --------------------------------------------------------------------


@dataclass
class SenderStats:
    seen: set[int] = field(default_factory=set)
    max_seq: int = -1
    duplicates: int = 0
    out_of_order: int = 0


class Recorder:
    """Everything that comes out of bus B: arrival latency per type, and sequence checks per sender."""

    def __init__(self, bus: Bus, maxsize: int) -> None:
        self.sub = bus.subscribe(TypeFilter([*TYPES, WARMUP]), maxsize=maxsize)
        self.warm = 0
        self.reset("")

    def reset(self, run: str) -> None:
        self.run = run
        self.latencies: dict[str, list[float]] = {t: [] for t in TYPES}
        self.senders: dict[str, SenderStats] = {}
        self.received = 0
        self.stray = 0
        self.gaps = 0
        self.last_arrival = 0.0
        self.expected = 0  # events of this run sent so far, whose arrival was awaited
        self.local = 0  # events without an origin (must stay 0: bus B emits nothing itself)

    async def consume(self) -> None:
        while True:
            item = await self.sub.get()
            now = time.time()
            if isinstance(item, Gap):
                self.gaps += item.dropped
                continue
            if item.type == WARMUP:
                self.warm += 1
                continue
            if item.origin is None:
                self.local += 1
                continue
            if item.data.get("run") != self.run:
                self.stray += 1
                continue
            self.received += 1
            self.last_arrival = now
            self.latencies[item.type].append(now - item.ts)
            stats = self.senders.setdefault(item.origin, SenderStats())
            seq = int(item.data["seq"])
            if seq in stats.seen:
                stats.duplicates += 1
                continue
            stats.seen.add(seq)
            if seq < stats.max_seq:
                stats.out_of_order += 1
            stats.max_seq = max(stats.max_seq, seq)

    async def wait_for(self, expected: int, stall: float = STALL_SECONDS) -> None:
        """Until `expected` events arrived, or nothing more arrived for `stall` seconds."""
        last_count, last_change = -1, time.monotonic()
        while self.received < expected:
            if self.received != last_count:
                last_count, last_change = self.received, time.monotonic()
            elif time.monotonic() - last_change > stall:
                log(f"gave up waiting: {self.received}/{expected} arrived, none for {stall:.0f}s")
                return
            await asyncio.sleep(0.02)

    def checks(self, expected: int) -> dict[str, Any]:
        unique = sum(len(s.seen) for s in self.senders.values())
        return {
            "events_sent": expected,
            "events_received": self.received,
            "lost": expected - unique,
            "duplicates": sum(s.duplicates for s in self.senders.values()),
            "out_of_order": sum(s.out_of_order for s in self.senders.values()),
            "per_sender": {
                worker: {
                    "unique": len(s.seen),
                    "lost": expected - len(s.seen),
                    "duplicates": s.duplicates,
                    "out_of_order": s.out_of_order,
                }
                for worker, s in sorted(self.senders.items())
            },
            "dropped_in_bus_b": self.gaps,
            "stray_from_other_phases": self.stray,
            "all_arrived": unique == expected and self.gaps == 0,
        }


def summarize(latencies: list[float]) -> dict[str, Any]:
    s = sorted(latencies)
    if not s:
        return {"samples": 0}

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)

    return {
        "samples": len(s),
        "mean_ms": round(sum(s) / len(s) * 1000, 2),
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": round(s[-1] * 1000, 2),
    }


# --- the transports ------------------------------------------------------------------------------


class Transport(Protocol):
    name: str
    bus_a: Bus
    bus_b: Bus

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def counters(self) -> dict[str, Any]: ...


class PgTransport:
    """The product's bridge, two instances on the scratch database."""

    def __init__(self, settings: Settings) -> None:
        self.name = "postgresql"
        self.settings = settings
        self.bus_a, self.bus_b = Bus(), Bus()
        self.a = BusBridge(settings, self.bus_a, "a")
        self.b = BusBridge(settings, self.bus_b, "b")
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self.a.run()), asyncio.create_task(self.b.run())]
        deadline = time.monotonic() + 15
        while not (self.a.listening and self.b.listening):
            if time.monotonic() > deadline:
                raise RuntimeError("the bus bridges did not start listening within 15 s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.a.close()
        self.b.close()

    def counters(self) -> dict[str, Any]:
        return {
            worker: {
                "sent": br.sent,
                "received": br.received,
                "dropped_queue": br.dropped_queue,
                "dropped_oversize": br.dropped_oversize,
                "send_failures": br.send_failures,
            }
            for worker, br in (("a", self.a), ("b", self.b))
        }


class MqttBusBridge:
    """The alternative bridge: the same envelope over the broker, on `waystation/_bus/<worker>/<type>`.

    Shaped like `BusBridge`: a `local_only` subscription feeds a send loop; the worker's link receives
    every worker's events, its own included (as PostgreSQL's listener does), and publishes the others'
    into its bus. Publishes are queued by paho and written by its network thread. As `BusBridge` keeps
    its backlog in the bus queue while a transaction is in flight, this one hands paho at most `window`
    unfinished publishes (acknowledged at QoS 1, written at QoS 0): paho scans its whole queue on every
    PUBACK, so a deep queue there costs O(n) per message (`window` 0 turns the limit off)."""

    def __init__(
        self, endpoint: MqttEndpoint, bus: Bus, worker: str, qos: int, queue: int, window: int
    ) -> None:
        self.bus = bus
        self.worker = worker
        self.qos = qos
        self.window = window
        self._sub = bus.subscribe(TypeFilter(["*"]), maxsize=queue, local_only=True)
        self.link = MqttLink(endpoint, f"bench-bus-{worker}-q{qos}-{os.getpid()}", protocol=5)
        self.link.subscribe(f"{TOPIC_PREFIX}/+/#", self._on_message, qos=qos)
        # MqttLink leaves paho's on_publish unused; counted in paho's network thread (one writer).
        self.link._client.on_publish = self._on_publish
        self.sent = 0
        self.finished = 0
        self.window_waits = 0
        self.received = 0
        self.dropped_queue = 0
        self.publish_failures = 0
        self.malformed = 0

    async def run(self) -> None:
        while True:
            item: Event | Gap | None = await self._sub.get()
            taken = 0
            while item is not None and taken < SEND_BATCH:
                taken += 1
                if isinstance(item, Gap):
                    self.dropped_queue += item.dropped
                else:
                    if self.window and self.sent - self.finished >= self.window:
                        self.window_waits += 1
                        while self.sent - self.finished >= self.window:
                            await asyncio.sleep(0.0005)
                    topic = f"{TOPIC_PREFIX}/{self.worker}/{item.type}"
                    if self.link.publish(topic, envelope(self.worker, item), qos=self.qos):
                        self.sent += 1
                    else:
                        self.publish_failures += 1
                item = self._sub.get_nowait() if taken < SEND_BATCH else None
            await asyncio.sleep(0)  # `get()` does not yield while events wait: let the others run

    def _on_publish(self, _client: Any, _userdata: Any, _mid: int, _reason: Any, _props: Any) -> None:
        self.finished += 1

    def _on_message(self, _topic: str, payload: bytes, _info: MessageInfo) -> None:
        try:
            msg = orjson.loads(payload)
            if msg["w"] == self.worker:
                return
            ev = Event(msg["t"], msg["d"], msg["s"], ts=float(msg["ts"]), origin=str(msg["w"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.malformed += 1
            return
        self.received += 1
        self.bus.publish(ev)

    def close(self) -> None:
        self._sub.close()


def _nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttTransport:
    def __init__(self, name: str, port: int, qos: int, queue: int, nodelay: bool, window: int) -> None:
        self.name = name
        endpoint = MqttEndpoint.parse(f"mqtt://127.0.0.1:{port}")
        self.bus_a, self.bus_b = Bus(), Bus()
        self.a = MqttBusBridge(endpoint, self.bus_a, "a", qos, queue, window)
        self.b = MqttBusBridge(endpoint, self.bus_b, "b", qos, queue, window)
        if nodelay:
            for br in (self.a, self.b):
                # MqttLink leaves Nagle on (paho never sets TCP_NODELAY); this variant turns it off.
                br.link._client.on_socket_open = _nodelay
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for br in (self.a, self.b):
            br.link.start()
        for br in (self.a, self.b):
            if not await br.link.wait_connected(15):
                raise RuntimeError(f"MQTT link {br.worker} did not connect: {br.link.last_error}")
        self._tasks = [asyncio.create_task(self.a.run()), asyncio.create_task(self.b.run())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for br in (self.a, self.b):
            br.close()
            await br.link.stop()

    def counters(self) -> dict[str, Any]:
        return {
            br.worker: {
                "sent": br.sent,
                "finished": br.finished,
                "window_waits": br.window_waits,
                "received": br.received,
                "dropped_queue": br.dropped_queue,
                "publish_failures": br.publish_failures,
                "malformed": br.malformed,
                "link_handler_errors": br.link.handler_errors,
            }
            for br in (self.a, self.b)
        }


def broker_options(max_queued: int) -> dict[str, Any]:
    """As the embedded broker is configured (waystation/broker/embedded.py)."""
    return {"max_queued_messages": max_queued, "max_inflight_messages": 1000}


def start_nodelay_broker(children: Children, workdir: Path, port: int, max_queued: int) -> Child:
    """`start_broker`'s configuration plus `set_tcp_nodelay true` (Mosquitto leaves Nagle on by default)."""
    conf = workdir / "mosquitto-nodelay.conf"
    conf.write_text(
        f"per_listener_settings false\n"
        f"listener {port} 127.0.0.1\n"
        f"max_connections -1\n"
        f"allow_anonymous true\n"
        f"persistence false\n"
        f"max_queued_messages {max_queued}\n"
        f"max_inflight_messages 1000\n"
        f"set_tcp_nodelay true\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    broker = children.spawn("mosquitto-nodelay", [MOSQUITTO, "-c", str(conf)])
    wait_port(port, 10)
    return broker


# --- CPU -----------------------------------------------------------------------------------------


Snapshot = tuple[float, float, float, float]


class Cpu:
    """CPU seconds of this process (both workers, all threads), Mosquitto and some PostgreSQL backends,
    summed over the intervals given to `add`."""

    def __init__(self, broker: psutil.Process, backends: list[psutil.Process]) -> None:
        self.broker = broker
        self.backends = backends
        self.total = [0.0, 0.0, 0.0, 0.0]

    @staticmethod
    def _seconds(ps: psutil.Process) -> float:
        try:
            t = ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    def snapshot(self) -> Snapshot:
        return (
            time.monotonic(),
            time.process_time(),
            self._seconds(self.broker),
            sum(self._seconds(p) for p in self.backends),
        )

    def add(self, start: Snapshot, end: Snapshot) -> None:
        for i in range(4):
            self.total[i] += end[i] - start[i]

    def report(self) -> dict[str, Any]:
        wall = max(self.total[0], 1e-9)
        out: dict[str, Any] = {"wall_seconds": round(wall, 2)}
        for i, name in ((1, "bench_process"), (2, "mosquitto"), (3, "postgres_bridge_backends")):
            used = self.total[i]
            out[name] = {"cpu_seconds": round(used, 2), "percent_of_one_core": round(100 * used / wall, 1)}
        self.total = [0.0, 0.0, 0.0, 0.0]
        return out


async def bridge_backends(admin: asyncpg.Connection, dbname: str) -> list[psutil.Process]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'waystation-%-bus-%'",
        dbname,
    )
    procs = []
    for row in rows:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(int(row["pid"])))
    return procs


# --- the phases ----------------------------------------------------------------------------------


@dataclass
class Subject:
    """One transport under test, with its recorder on bus B and its CPU account."""

    transport: Transport
    recorder: Recorder
    consumer: asyncio.Task[None]
    cpu: Cpu | None = None
    sent_seconds: float = 0.0
    lag_max: float = 0.0
    round_p99_ms: list[float | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.transport.name


async def warm_up(subject: Subject) -> None:
    """Emit warm-up events until one crosses (connections, subscriptions and listeners are live)."""
    bus, recorder = subject.transport.bus_a, subject.recorder
    deadline = time.monotonic() + 15
    before = recorder.warm
    while recorder.warm == before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{subject.name}: no warm-up event crossed within 15 s")
        bus.emit(WARMUP, {"run": "warm"})
        await asyncio.sleep(0.05)
    for _ in range(50):  # a few more, so the first measured events meet warm code paths
        bus.emit(WARMUP, {"run": "warm"})
    await asyncio.sleep(0.3)


async def latency_slice(subject: Subject, events: list[tuple[str, dict[str, Any]]], rate: float) -> None:
    """Emit `events` at `rate` on bus A and wait until they crossed (or stalled)."""
    assert subject.cpu is not None
    bus, recorder = subject.transport.bus_a, subject.recorder
    before = len(recorder.latencies[SMALL]) + len(recorder.latencies[BATCH])
    gc.collect()
    c0 = subject.cpu.snapshot()
    started = time.monotonic()
    for i, (type_, data) in enumerate(events):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            subject.lag_max = max(subject.lag_max, -delay)
        bus.emit(type_, data)
    subject.sent_seconds += time.monotonic() - started
    await recorder.wait_for(recorder.expected + len(events))
    recorder.expected += len(events)
    subject.cpu.add(c0, subject.cpu.snapshot())
    in_slice = [x for t in TYPES for x in recorder.latencies[t]][before:]
    subject.round_p99_ms.append(summarize(in_slice).get("p99_ms"))


def latency_report(subject: Subject, count: int, rate: float) -> dict[str, Any]:
    assert subject.cpu is not None
    recorder = subject.recorder
    sent = subject.sent_seconds
    return {
        "rate_target": rate,
        "rate_achieved": round(count / sent, 1) if sent else None,
        "send_lag_max_ms": round(subject.lag_max * 1000, 1),
        **recorder.checks(count),
        "latency": summarize([x for t in TYPES for x in recorder.latencies[t]]),
        "latency_by_type": {t: summarize(recorder.latencies[t]) for t in TYPES},
        "p99_ms_by_round": subject.round_p99_ms,
        "cpu": subject.cpu.report(),
    }


async def burst_phase(subject: Subject, events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    assert subject.cpu is not None
    bus, recorder = subject.transport.bus_a, subject.recorder
    recorder.reset("burst")
    gc.collect()
    c0 = subject.cpu.snapshot()
    t0 = time.time()
    for i, (type_, data) in enumerate(events):
        bus.emit(type_, data)
        if i % EMIT_CHUNK == EMIT_CHUNK - 1:
            await asyncio.sleep(0)
    emitted_in = time.time() - t0
    await recorder.wait_for(len(events))
    subject.cpu.add(c0, subject.cpu.snapshot())
    checks = recorder.checks(len(events))
    span = recorder.last_arrival - t0 if recorder.received else 0.0
    unique = len(events) - checks["lost"]
    return {
        "emit_seconds": round(emitted_in, 3),
        "seconds_to_last_arrival": round(span, 3),
        "events_per_second": round(unique / span, 1) if span > 0 else None,
        **checks,
        "latency": summarize(recorder.latencies[SMALL]),
        "cpu": subject.cpu.report(),
    }


async def measure(
    transports: list[Transport],
    mix: list[tuple[str, dict[str, Any]]],
    burst: list[tuple[str, dict[str, Any]]],
    rate: float,
    rounds: int,
    queue: int,
    cpu_for: Callable[[Transport], Awaitable[Cpu]],
) -> dict[str, Any]:
    """All transports up at once; the fixed-rate phase in `rounds` slices taken by each transport in
    turn (the order rotating), so load from elsewhere on the machine falls on all of them alike; then
    one burst each."""
    subjects: list[Subject] = []
    try:
        for transport in transports:
            log(f"{transport.name}: starting")
            recorder = Recorder(transport.bus_b, maxsize=queue)
            subject = Subject(transport, recorder, asyncio.create_task(recorder.consume()))
            subjects.append(subject)
            await transport.start()
            await warm_up(subject)
            subject.cpu = await cpu_for(transport)
            recorder.reset("lat")
        size = -(-len(mix) // rounds)
        slices = [mix[i : i + size] for i in range(0, len(mix), size)]
        for r, events in enumerate(slices):
            shift = r % len(subjects)
            for subject in subjects[shift:] + subjects[:shift]:
                await latency_slice(subject, events, rate)
                await asyncio.sleep(0.1)
            log(
                f"round {r + 1}/{len(slices)}: p99 "
                + ", ".join(f"{s.name} {s.round_p99_ms[-1]} ms" for s in subjects)
            )
        results: dict[str, Any] = {}
        for subject in subjects:
            results[subject.name] = {"latency_phase": latency_report(subject, len(mix), rate)}
            lat = results[subject.name]["latency_phase"]
            log(f"{subject.name}: latency {lat['latency']} lost {lat['lost']}")
        for subject in subjects:
            await asyncio.sleep(0.3)
            throughput = await burst_phase(subject, burst)
            results[subject.name]["throughput_phase"] = throughput
            results[subject.name]["counters"] = subject.transport.counters()
            log(
                f"{subject.name}: burst {throughput['events_per_second']} events/s, "
                f"lost {throughput['lost']}, duplicates {throughput['duplicates']}, "
                f"out of order {throughput['out_of_order']}"
            )
        return results
    finally:
        for subject in subjects:
            with contextlib.suppress(Exception):
                await subject.transport.stop()
            subject.consumer.cancel()
            await asyncio.gather(subject.consumer, return_exceptions=True)
            subject.recorder.sub.close()


# --- the run -------------------------------------------------------------------------------------


LABELS = {
    "postgresql": "PostgreSQL LISTEN/NOTIFY",
    "mqtt_qos1": "broker QoS 1",
    "mqtt_qos0": "broker QoS 0",
    "mqtt_qos1_nodelay": "broker QoS 1 with TCP_NODELAY",
}


def compare(ours: float | None, theirs: float | None, better: str) -> str:
    """PostgreSQL's figure against the other's: '3.2x lower, better (2.0 vs 6.4)'; within 25 % they are
    'about the same' (one run on a shared machine does not tell such differences apart)."""
    if not ours or not theirs:
        return "not comparable"
    ratio = max(ours, theirs) / min(ours, theirs)
    if ratio < 1.25:
        return f"about the same ({ours} vs {theirs})"
    word = "lower" if ours < theirs else "higher"
    return f"{ratio:.1f}x {word}, {'better' if word == better else 'worse'} ({ours} vs {theirs})"


def conclusion(results: dict[str, Any], loadavg: float | None = None, cpus: int | None = None) -> str:
    """Which transport has the lower p99 and the higher burst throughput, from the numbers."""
    p99 = {n: r["latency_phase"]["latency"].get("p99_ms") for n, r in results.items()}
    rate = {n: r["throughput_phase"]["events_per_second"] for n, r in results.items()}
    parts = []
    p99_known = {n: v for n, v in p99.items() if v is not None}
    rate_known = {n: v for n, v in rate.items() if v}
    if p99_known:
        best = min(p99_known, key=lambda n: p99_known[n])
        listed = ", ".join(f"{LABELS[n]} {v} ms" for n, v in p99_known.items())
        parts.append(f"lowest p99 at the fixed rate: {LABELS[best]} ({listed})")
    if rate_known:
        best = max(rate_known, key=lambda n: rate_known[n])
        listed = ", ".join(f"{LABELS[n]} {v:.0f}/s" for n, v in rate_known.items())
        parts.append(f"highest burst throughput: {LABELS[best]} ({listed})")
    p50 = {n: r["latency_phase"]["latency"].get("p50_ms") for n, r in results.items()}
    if p99.get("postgresql") and rate.get("postgresql"):
        for other in ("mqtt_qos1", "mqtt_qos1_nodelay"):
            if p99.get(other) and rate.get(other):
                parts.append(
                    f"PostgreSQL vs {LABELS[other]}: p50 {compare(p50['postgresql'], p50[other], 'lower')}, "
                    f"p99 {compare(p99['postgresql'], p99[other], 'lower')}, "
                    f"burst throughput {compare(rate['postgresql'], rate[other], 'higher')}"
                )
    losses = {
        n: r["latency_phase"]["lost"] + r["throughput_phase"]["lost"]
        for n, r in results.items()
        if r["latency_phase"]["lost"] + r["throughput_phase"]["lost"]
    }
    parts.append(f"lost events: {losses}" if losses else "no transport lost an event")
    if loadavg is not None and cpus and loadavg > cpus:
        parts.append(
            f"the machine was busy (1-min load {loadavg:.1f} on {cpus} CPUs): the tails (p99, max) show "
            "its scheduling more than the transports"
        )
    return "; ".join(parts) + "."


async def run(args: argparse.Namespace, children: Children, workdir: Path) -> dict[str, Any]:
    loadavg_start = os.getloadavg()
    admin = await asyncpg.connect(args.pg_url)
    dbname = f"waystation_bench_bus_{os.getpid()}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    try:
        pg_version = await admin.fetchval("SHOW server_version")
        queue = max(10_000, args.burst + 1_000)  # the bridge's queue holds a whole burst (none dropped)
        settings = Settings(
            data_dir=workdir / "data",
            database_url=f"{args.pg_url.rsplit('/', 1)[0]}/{dbname}".replace(
                "postgresql://", "postgresql+asyncpg://", 1
            ),
            cluster_bridge_queue=queue,
        )
        max_queued = max(100_000, 2 * args.burst)
        brokers: dict[bool, tuple[int, Child]] = {}

        def broker_for(nodelay: bool) -> tuple[int, Child]:
            if nodelay not in brokers:
                port = free_port()
                if nodelay:
                    brokers[nodelay] = (port, start_nodelay_broker(children, workdir, port, max_queued))
                else:
                    brokers[nodelay] = (
                        port,
                        start_broker(children, workdir, port, **broker_options(max_queued)),
                    )
            return brokers[nodelay]

        count = int(args.rate * args.seconds)
        mix = build_mix(count, seed=1)
        burst = build_burst(args.burst, seed=2)
        sizes: dict[str, list[int]] = {t: [] for t in TYPES}
        for type_, data in mix[:500]:
            sizes[type_].append(len(envelope("a", Event(type_, data))))
        transports: list[Transport] = []
        broker_of: dict[str, Child] = {}
        for name in args.transports:
            nodelay = name.endswith("_nodelay")
            port, broker_of[name] = broker_for(nodelay)
            if name == "postgresql":
                transports.append(PgTransport(settings))
            else:
                qos = int(name.removeprefix("mqtt_qos")[0])
                transports.append(MqttTransport(name, port, qos, queue, nodelay, args.mqtt_window))

        async def cpu_for(t: Transport) -> Cpu:
            backends = await bridge_backends(admin, dbname) if isinstance(t, PgTransport) else []
            return Cpu(broker_of[t.name].ps, backends)

        results = await measure(transports, mix, burst, args.rate, args.rounds, queue, cpu_for)
        return {
            "benchmark": "bus_bridge",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": shlex.join([sys.executable, *sys.argv]),
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_at_start": [round(x, 2) for x in loadavg_start],
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "postgresql": pg_version,
            "mosquitto": mosquitto_version(),
            "parameters": {
                "rate_per_second": args.rate,
                "seconds": args.seconds,
                "latency_events": count,
                "mix": {SMALL: 1 - BATCH_SHARE, BATCH: BATCH_SHARE},
                "batch_items": BATCH_ITEMS,
                "rounds": args.rounds,
                "burst_events": args.burst,
                "bridge_queue": queue,
                "mqtt_window": args.mqtt_window,
                "quick": args.quick,
            },
            "envelope_bytes_mean": {t: round(sum(v) / len(v)) if v else None for t, v in sizes.items()},
            "transports": results,
            "conclusion": conclusion(results, loadavg_start[0], os.cpu_count()),
        }
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=None, help="events/s in the latency phase (500)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the latency phase (20)")
    parser.add_argument(
        "--burst", type=int, default=None, help="small events in the throughput burst (20000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="slices of the fixed-rate phase, taken by the transports in turn (4; --quick: 1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s at 200/s and a 200-event burst per transport"
    )
    parser.add_argument(
        "--transports",
        default=",".join(DEFAULT_TRANSPORTS),
        help=f"comma-separated, from {', '.join(TRANSPORTS)} ({','.join(DEFAULT_TRANSPORTS)})",
    )
    parser.add_argument(
        "--mqtt-window",
        type=int,
        default=MQTT_WINDOW,
        help=f"unfinished publishes the broker bridge hands paho at most; 0: no limit ({MQTT_WINDOW})",
    )
    parser.add_argument("--pg-url", default=PG_ADMIN_URL, help=f"an admin connection ({PG_ADMIN_URL})")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "bus-bridge.json")
    args = parser.parse_args()
    quick = args.quick
    args.rate = args.rate if args.rate is not None else (200.0 if quick else 500.0)
    args.seconds = args.seconds if args.seconds is not None else (1.0 if quick else 20.0)
    args.burst = args.burst if args.burst is not None else (200 if quick else 20_000)
    args.rounds = max(1, args.rounds if args.rounds is not None else (1 if quick else 4))
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = set(args.transports) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transports: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="ws-bench-bus-") as tmp:
        workdir = Path(tmp)
        children = Children(workdir)
        try:
            result = asyncio.run(run(args, children, workdir))
        except (KeyboardInterrupt, Interrupted):
            log("interrupted")
            return 130
        finally:
            children.stop_all()
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
