"""Telemetry ingest: sustained MQTT → committed rows rate, publish → commit latency, station RSS.

Not a pytest test. Run it from the project root with the project's virtualenv:

    .venv/bin/python bench/ingest.py                          # SQLite, then PostgreSQL
    .venv/bin/python bench/ingest.py --db sqlite --messages 100000 --duration 10

For each database (SQLite in a temp data dir; PostgreSQL: a fresh database `ws_bench_<pid>` on
127.0.0.1:5432, dropped afterwards), each piece a separate process:

1. a private Mosquitto on a free loopback port (never 1883), `max_queued_messages 1000000`,
   `max_inflight_messages 1000`;
2. `waystation simulate --type sensor --duration 1` registers the devices (and migrates the database),
   `waystation user create` makes a user for the SSE stream;
3. BASELINE: bench/baseline_subscriber.py (a bare paho-mqtt subscriber, QoS 1) alone on the broker
   receives `--messages` state messages published flat out by bench/ingest_publisher.py; its rate is
   taken over the steady window (10 % → 90 % of the messages received). It speaks MQTT 3.1.1 like the
   devices benchmark's baseline; the same subscriber speaking MQTT 5 (the station's protocol) is run
   too and reported as a secondary figure;
4. the station (`waystation run`) starts; a heartbeat probe proves its subscription is live;
5. THROUGHPUT: the same `--messages` messages flat out; the rate of messages whose rows are committed
   is the slope of `waystation_ingest_messages_total` (scraped every 0.2 s) over the same 10 % → 90 %
   window; ratio = station rate / baseline rate;
6. LATENCY: `--latency-rate` messages/s for `--duration` seconds. One device (the tracer) carries its
   sequence number as field `a`; the bench follows `GET /api/v1/events/stream?types=telemetry.batch`,
   whose events carry the newest committed value per channel after every commit, so an event with
   value v says every tracer message ≤ v is committed: latency(k) = arrival of the first such event -
   the time message k was written to the publisher's socket. The station's own histogram
   `waystation_ingest_latency_seconds` is reported too (it starts when a message enters the ingest
   queue, so it misses the broker, the socket and the link's inbox);
7. the datapoints table must hold exactly 3 rows per published message (nothing lost, no duplicate),
   60 channels for 20 devices, and the 1-minute rollups must count the same rows;
8. the station's RSS is sampled every 0.1 s for its whole life (plus the kernel's VmHWM).

One JSON object goes to stdout and to bench/results/ingest.json; progress goes to stderr. Every child
is stopped and the PostgreSQL database dropped on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psutil

from _common import (
    BENCH,
    MB,
    MOSQUITTO,
    PG_ADMIN_URL,
    PG_ASYNC_URL,
    VENV_BIN,
    Children,
    Interrupted,
    Store,
    cpu_seconds,
    free_port,
    log,
    mosquitto_version,
    on_sigterm,
    psql,
    rss_hwm_mb,
    scrape,
    start_broker,
    station_env,
    wait_ready,
)

FIELDS = 3  # numeric fields per message: a, b, c

TARGET_RATIO = {"sqlite": 0.7, "postgresql": 0.55}
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 200.0

WINDOW = (0.10, 0.90)  # steady window: from 10 % to 90 % of the messages


# --- small helpers ---------------------------------------------------------------------------------


def steady_rate(samples: list[tuple[float, float]], total: int) -> dict[str, Any]:
    """Slope of a cumulative count between the samples where it first reaches 10 % and 90 % of total."""
    lo, hi = WINDOW[0] * total, WINDOW[1] * total
    start = next((s for s in samples if s[1] >= lo), None)
    end = next((s for s in samples if s[1] >= hi), None)
    if start is None or end is None or end[0] <= start[0]:
        return {"rate_per_s": None, "window_s": None, "window_messages": None}
    return {
        "rate_per_s": round((end[1] - start[1]) / (end[0] - start[0]), 1),
        "window_s": round(end[0] - start[0], 2),
        "window_messages": int(end[1] - start[1]),
    }


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def histogram(metrics: dict[str, float], name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for key, value in metrics.items():
        m = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if m:
            out[float(m.group(1))] = value
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Prometheus-style quantile (linear within a bucket) of the observations between two scrapes."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    if not cum or cum[-1] <= 0:
        return None
    rank = q * cum[-1]
    prev_bound, prev_cum = 0.0, 0.0
    for bound, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if bound == float("inf"):
                return prev_bound  # only "above the last finite bucket" is known
            if c == prev_cum:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_cum) / (c - prev_cum)
        prev_bound, prev_cum = bound, c
    return None


class RssSampler(threading.Thread):
    def __init__(self, ps: psutil.Process, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.ps, self.interval = ps, interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic(), self.ps.memory_info().rss))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def peak_mb(self, since: float = 0.0) -> float | None:
        values = [rss for t, rss in self.samples if t >= since]
        return round(max(values) / MB, 1) if values else None


class SseReader(threading.Thread):
    """Follows the station's SSE stream; records (arrival time, value) for one channel."""

    def __init__(self, base_url: str, token: str, channel: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.token, self.channel = base_url, token, channel
        self.events: list[tuple[float, float]] = []
        self.batches = 0
        self.gaps = 0
        self.ready = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(10.0, read=None)) as client,
                client.stream(
                    "GET",
                    "/api/v1/events/stream",
                    params={"types": "telemetry.batch"},
                    headers={"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"},
                ) as response,
            ):
                response.raise_for_status()
                self.ready.set()
                event = ""
                for line in response.iter_lines():
                    now = time.time()
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        if event == "stream.gap":
                            self.gaps += 1
                        elif event == "telemetry.batch":
                            self.batches += 1
                            for item in json.loads(line[5:])["items"]:
                                if item["channel"] == self.channel:
                                    self.events.append((now, float(item["value"])))
                    elif not line:
                        event = ""
        except Exception as exc:  # the station stopping ends the stream too
            if not self.ready.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()


def latencies(publish_times: list[float], events: list[tuple[float, float]]) -> tuple[list[float], int]:
    """latency of tracer message k = arrival of the first event whose value ≥ k - its publish time."""
    out: list[float] = []
    committed = -1  # highest sequence number known committed
    k = 0
    for arrival, value in sorted(events):
        committed = max(committed, int(value))
        while k < len(publish_times) and k <= committed:
            out.append(arrival - publish_times[k])
            k += 1
    return out, len(publish_times) - k


def summarize_ms(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    pct = {
        f"p{name}_ms": (round(v * 1000, 2) if (v := percentile(s, q)) is not None else None)
        for name, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99_9", 0.999))
    }
    return {
        "samples": len(s),
        **pct,
        "min_ms": round(s[0] * 1000, 2) if s else None,
        "max_ms": round(s[-1] * 1000, 2) if s else None,
        "mean_ms": round(1000 * sum(s) / len(s), 2) if s else None,
    }


# --- profiling (optional, --profile) ---------------------------------------------------------------


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy `--format raw --threads` (collapsed stacks) → shares per thread, top self and inclusive.

    Percentages are of all samples. Inclusive figures leave out the frames (nearly) every sample of a
    thread passes through (the CLI, `Runner.run`, `Thread.run`, ...), which say nothing.
    """
    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    per_thread: dict[str, Counter[str]] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
            thread = re.sub(r"^paho-mqtt-client-.*", "paho-mqtt-client", thread)
            thread = re.sub(r"^Thread-\d+ \((.*)\)$", r"\1", thread)
            frames = frames[1:]
        samples += count
        threads[thread] += count
        names = [re.sub(r" \((.+):\d+\)$", r" (\1)", f) for f in frames]
        if names:
            self_count[names[-1]] += count
        seen = per_thread.setdefault(thread, Counter())
        for name in set(names):
            seen[name] += count
    if not samples:
        return {"samples": 0}
    for thread, counts in per_thread.items():
        for name, n in counts.items():
            if n < 0.75 * threads[thread]:
                total_count[name] += n
    pct = lambda n: round(100.0 * n / samples, 1)  # noqa: E731
    return {
        "samples": samples,
        "threads_percent": {t: pct(n) for t, n in threads.most_common()},
        "top_self_percent": {f: pct(n) for f, n in self_count.most_common(top)},
        "top_inclusive_percent": {f: pct(n) for f, n in total_count.most_common(top)},
    }


# --- one database ----------------------------------------------------------------------------------


class Phase:
    """Everything for one database: its broker, data dir, station and measurements."""

    def __init__(self, args: argparse.Namespace, children: Children, workdir: Path, kind: str) -> None:
        self.args, self.children, self.kind = args, children, kind
        self.dir = workdir / kind
        self.dir.mkdir()
        self.data_dir = self.dir / "data"
        self.pg_db = f"ws_bench_{os.getpid()}" if kind == "postgresql" else None
        self.mqtt_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.mqtt_port:
            self.http_port = free_port()
        self.env = station_env(self.data_dir, self.mqtt_port, self.http_port)
        if self.pg_db:
            self.env["WAYSTATION_DATABASE_URL"] = PG_ASYNC_URL.format(db=self.pg_db)
        self.mqtt_url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.store = Store(kind, self.data_dir / "waystation.db", self.pg_db)
        self.devices = [f"sim-{i + 1:04d}" for i in range(args.devices)]
        self.password = secrets.token_urlsafe(18)
        self.station_id = ""
        self.problems: list[str] = []

    # processes ----------------------------------------------------------------------------------

    def cli(self, argv: list[str], stdin: str | None = None, timeout: float = 120) -> str:
        out = subprocess.run(
            [str(VENV_BIN / "waystation"), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.dir,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"`waystation {' '.join(argv)}` failed ({out.returncode}):\n{out.stderr}")
        return out.stdout + out.stderr  # the CLI's messages go to stderr

    def publish(self, name: str, messages: int, rate: float, ts_base: int, tracer_out: Path | None) -> dict:
        """Run the publisher process(es) to completion; returns the summary (summed over publishers)."""
        count = max(1, min(self.args.publishers, len(self.devices)))
        groups = [self.devices[i::count] for i in range(count)]
        shares = [messages // count + (1 if i < messages % count else 0) for i in range(count)]
        procs = []
        for i, (group, share) in enumerate(zip(groups, shares, strict=True)):
            argv = [
                sys.executable,
                str(BENCH / "ingest_publisher.py"),
                "--port",
                str(self.mqtt_port),
                "--station",
                self.station_id,
                "--devices",
                ",".join(group),
                "--messages",
                str(share),
                "--ts-base",
                str(ts_base),
            ]
            if rate > 0:
                argv += ["--rate", str(rate / count)]
            if tracer_out is not None and i == 0:
                argv += ["--tracer", group[0], "--out", str(tracer_out)]
            procs.append(self.children.spawn(f"{self.kind}-{name}-publisher-{i}", argv, self.env))
        summaries = []
        for p in procs:
            p.popen.wait(timeout=max(300.0, 3 * messages / max(rate, 1.0)))
            lines = p.text("stdout").strip().splitlines()
            if not lines:
                raise RuntimeError(f"publisher printed nothing:\n{p.tail()}")
            summary = json.loads(lines[-1])
            if p.popen.returncode != 0:
                raise RuntimeError(f"publisher failed: {summary}\n{p.tail()}")
            summaries.append(summary)
            self.children.stop(p)
        t_start = min(s["t_start"] for s in summaries)
        t_acked = max(s["t_acked"] for s in summaries)
        published = sum(s["published"] for s in summaries)
        return {
            "processes": count,
            "published": published,
            "acked_by_broker": sum(s["acked"] for s in summaries),
            "t_start": t_start,
            "t_acked": t_acked,
            "publish_rate_per_s": round(published / max(t_acked - t_start, 1e-9), 1),
            "behind_schedule_max_s": max(s["behind_schedule_max_s"] for s in summaries),
            "ts_last": max(s["ts_last"] for s in summaries),
        }

    # steps --------------------------------------------------------------------------------------

    def prepare(self) -> dict[str, Any]:
        t0 = time.monotonic()
        if self.pg_db:
            psql(PG_ADMIN_URL, f"create database {self.pg_db}")
            log(f"[{self.kind}] created database {self.pg_db}")
        self.broker = start_broker(
            self.children,
            self.dir,
            self.mqtt_port,
            name=f"{self.kind}-mosquitto",
            max_queued_messages=1_000_000,
            max_inflight_messages=1000,
        )
        out = self.cli(
            [
                "simulate",
                "--devices",
                str(self.args.devices),
                "--type",
                "sensor",
                "--duration",
                "1",
                "--mqtt",
                self.mqtt_url,
            ]
        )
        m = re.search(r"registered (\d+) new device\(s\) in station (\S+)", out)
        if not m or int(m.group(1)) != self.args.devices:
            raise RuntimeError(f"`waystation simulate` did not register {self.args.devices} devices:\n{out}")
        self.station_id = m.group(2)
        ids = self.store.scalar(
            f"select count(*) from devices where station_id = '{self.station_id}' "
            f"and type = 'sensor' and id in ({','.join(repr(d) for d in self.devices)})"
        )
        if int(ids) != self.args.devices:
            raise RuntimeError(f"expected devices {self.devices[0]}…{self.devices[-1]}, found {ids}")
        self.cli(
            ["user", "create", "bench", "--role", "admin", "--password-stdin"], stdin=self.password + "\n"
        )
        seconds = time.monotonic() - t0
        log(
            f"[{self.kind}] broker on :{self.mqtt_port}; {self.args.devices} sensors registered in station "
            f"{self.station_id}; user created ({seconds:.1f}s)"
        )
        return {"prepare": round(seconds, 1)}

    def baseline(self, protocol: int = 4) -> dict[str, Any]:
        n = self.args.messages
        sub = self.children.spawn(
            f"{self.kind}-baseline-v{protocol}",
            [
                sys.executable,
                str(BENCH / "baseline_subscriber.py"),
                "127.0.0.1",
                str(self.mqtt_port),
                "0.1",
                "5" if protocol == 5 else "3",
            ],
            self.env,
        )
        deadline = time.monotonic() + 15
        while "subscribed" not in sub.text("stdout"):
            if not sub.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the baseline subscriber did not subscribe:\n{sub.tail()}")
            time.sleep(0.05)
        cpu0 = cpu_seconds(sub.ps)
        pub = self.publish("baseline", n, 0, int(time.time() * 1000), None)
        deadline = time.monotonic() + max(60.0, n / 2000)
        reports: list[tuple[float, float]] = []
        while True:
            reports = [
                (float(t), float(c)) for c, t in re.findall(r"received (\d+) ([\d.]+)", sub.text("stdout"))
            ]
            if reports and reports[-1][1] >= n:
                break
            if time.monotonic() > deadline or not sub.alive():
                raise RuntimeError(f"the baseline received {reports[-1][1] if reports else 0} of {n}")
            time.sleep(0.2)
        cpu = cpu_seconds(sub.ps) - cpu0
        rss = sub.ps.memory_info().rss
        self.children.stop(sub)
        done = next(t for t, c in reports if c >= n)
        result = {
            **steady_rate(reports, n),
            "received": int(reports[-1][1]),
            "overall_rate_per_s": round(n / (done - pub["t_start"]), 1),
            "cpu_seconds": round(cpu, 2),
            "rss_mb": round(rss / MB, 1),
            "publisher": pub,
        }
        log(
            f"[{self.kind}] baseline (MQTT {'5' if protocol == 5 else '3.1.1'}): "
            f"{result['rate_per_s']} msg/s (steady), "
            f"{result['overall_rate_per_s']} overall"
        )
        return result

    def start_station(self) -> dict[str, Any]:
        self.station = self.children.spawn(
            f"{self.kind}-station", [str(VENV_BIN / "waystation"), "run"], self.env
        )
        self.rss = RssSampler(self.station.ps)
        self.rss.start()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}")
        ready = wait_ready(self.station, self.http, 90)
        self.rss_idle = self.station.ps.memory_info().rss
        # The link subscribes on connect; a heartbeat the station counts proves the subscription is live.
        probe = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{os.getpid()}")
        probe.connect("127.0.0.1", self.mqtt_port)
        probe.loop_start()
        try:
            deadline = time.monotonic() + 30
            topic = f"station/{self.station_id}/device/{self.devices[-1]}/heartbeat"
            while scrape(self.http).get('waystation_mqtt_messages_total{kind="heartbeat"}', 0) < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the station never counted a probe heartbeat:\n{self.station.tail()}")
                probe.publish(topic, b'{"status":"online"}', qos=1).wait_for_publish(5)
                time.sleep(0.3)
        finally:
            probe.disconnect()
            probe.loop_stop()
        r = self.http.post("/api/v1/auth/login", json={"username": "bench", "password": self.password})
        r.raise_for_status()
        self.token = r.json()["access_token"]
        log(f"[{self.kind}] station ready in {ready:.1f}s (pid {self.station.popen.pid})")
        return {"station_ready": round(ready, 1)}

    def wait_committed(self, target: int, samples: list[tuple[float, float]] | None = None) -> float:
        """Scrape /metrics every 0.2 s until `target` messages are committed; returns that time."""
        stalled_since = time.monotonic()
        last = -1.0
        self.max_queue_rows = 0.0
        self.max_uncommitted = 0.0
        while True:
            if not self.station.alive():
                raise RuntimeError(f"the station exited:\n{self.station.tail()}")
            m = scrape(self.http)
            now = time.time()
            committed = m.get("waystation_ingest_messages_total", 0.0)
            # accepted by the device runtime but not yet committed: what the station holds in memory
            accepted = m.get('waystation_mqtt_messages_total{kind="state"}', 0.0)
            self.max_uncommitted = max(self.max_uncommitted, accepted - committed)
            self.max_queue_rows = max(self.max_queue_rows, m.get("waystation_ingest_queue_rows", 0.0))
            if samples is not None:
                samples.append((now, committed))
            if committed >= target:
                return now
            if committed != last:
                last, stalled_since = committed, time.monotonic()
            elif time.monotonic() - stalled_since > self.args.stall_timeout:
                raise RuntimeError(
                    f"ingest stalled at {committed:.0f}/{target} committed messages for "
                    f"{self.args.stall_timeout:.0f}s:\n{self.station.tail()}"
                )
            time.sleep(0.2)

    def throughput(self, baseline_rate: float | None) -> dict[str, Any]:
        n = self.args.messages
        before = scrape(self.http)
        committed0 = before.get("waystation_ingest_messages_total", 0.0)
        cpu0, broker_cpu0, t0 = cpu_seconds(self.station.ps), cpu_seconds(self.broker.ps), time.monotonic()
        profiler = None
        if self.args.profile:
            profile_path = self.dir / "profile.txt"
            profiler = self.children.spawn(
                f"{self.kind}-py-spy",
                [
                    str(VENV_BIN / "py-spy"),
                    "record",
                    "--pid",
                    str(self.station.popen.pid),
                    "--duration",
                    str(int(self.args.profile)),
                    "--rate",
                    "200",
                    "--threads",
                    "--nonblocking",
                    *(["--gil"] if self.args.profile_gil else []),
                    "--format",
                    "raw",
                    "-o",
                    str(profile_path),
                ],
                self.env,
            )
        raw: list[tuple[float, float]] = []
        self.ts_base = int(time.time() * 1000)
        pub = self.publish("throughput", n, 0, self.ts_base, None)
        self.ts_next = pub["ts_last"] + 1000
        done = self.wait_committed(int(committed0) + n, raw)
        wall = time.monotonic() - t0
        cpu, broker_cpu = cpu_seconds(self.station.ps) - cpu0, cpu_seconds(self.broker.ps) - broker_cpu0
        samples = [(t, c - committed0) for t, c in raw]
        after = scrape(self.http)
        rate = steady_rate(samples, n)
        result: dict[str, Any] = {
            **rate,
            "overall_rate_per_s": round(n / (done - pub["t_start"]), 1),
            "rows_per_s": round(FIELDS * rate["rate_per_s"], 1) if rate["rate_per_s"] else None,
            "baseline_rate_per_s": baseline_rate,
            "ratio": round(rate["rate_per_s"] / baseline_rate, 3)
            if rate["rate_per_s"] and baseline_rate
            else None,
            "station_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "broker_cpu_percent_of_one_core": round(100 * broker_cpu / wall, 1),
            "batches": int(
                after.get("waystation_ingest_batch_rows_count", 0)
                - before.get("waystation_ingest_batch_rows_count", 0)
            ),
            "max_uncommitted_messages_seen": int(self.max_uncommitted),
            "max_queue_rows_seen": int(self.max_queue_rows),
            "pauses": int(
                after.get("waystation_ingest_pauses_total", 0)
                - before.get("waystation_ingest_pauses_total", 0)
            ),
            "commit_seconds_mean": _hist_mean(before, after, "waystation_ingest_commit_seconds"),
            "rows_per_batch_mean": _hist_mean(before, after, "waystation_ingest_batch_rows"),
            "publisher": pub,
        }
        if profiler is not None:
            profiler.popen.wait(timeout=self.args.profile + 30)
            result["profile"] = summarize_profile(self.dir / "profile.txt")
            result["profile"]["file"] = str(self.dir / "profile.txt")
            self.problems.append("profiled run (py-spy attached): throughput numbers are perturbed")
        log(
            f"[{self.kind}] throughput: {result['rate_per_s']} msg/s committed (steady), "
            f"ratio {result['ratio']}, station CPU {result['station_cpu_percent_of_one_core']} %"
        )
        return result

    def latency(self) -> dict[str, Any]:
        rate, duration = self.args.latency_rate, self.args.duration
        n = int(rate * duration)
        tracer = self.devices[0]
        sse = SseReader(f"http://127.0.0.1:{self.http_port}", self.token, f"device:{tracer}/a")
        sse.start()
        if not sse.ready.wait(15) or sse.error:
            raise RuntimeError(f"could not follow the SSE stream: {sse.error}")
        time.sleep(0.3)
        before = scrape(self.http)
        committed0 = before.get("waystation_ingest_messages_total", 0.0)
        cpu0, t0 = cpu_seconds(self.station.ps), time.monotonic()
        tracer_file = self.dir / "tracer.json"
        pub = self.publish("latency", n, rate, self.ts_next, tracer_file)
        self.wait_committed(int(committed0) + n)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(self.station.ps) - cpu0
        time.sleep(0.5)  # the last telemetry.batch event
        after = scrape(self.http)
        times = json.loads(tracer_file.read_text())["times"]
        events = list(sse.events)
        (self.dir / "sse-events.json").write_text(json.dumps(events))
        lat, uncovered = latencies(times, events)
        # lat[i] belongs to times[i]; the same figures without the first 2 s (the batcher warming up)
        settled = [v for v, t in zip(lat, times, strict=False) if times and t >= times[0] + 2.0]
        if uncovered:
            self.problems.append(
                f"{uncovered} tracer messages never showed up as committed on the SSE stream"
            )
        if sse.gaps:
            self.problems.append(f"the SSE stream reported {sse.gaps} gap(s)")
        name = "waystation_ingest_latency_seconds"
        hb, ha = histogram(before, name), histogram(after, name)
        result = {
            "rate_per_s": rate,
            "duration_s": duration,
            "messages": n,
            "publisher": pub,
            "publish_to_commit_sse": {
                "method": "publisher socket write → first telemetry.batch SSE event covering the tracer seq",
                "tracer_device": tracer,
                **summarize_ms(lat),
                "uncovered": uncovered,
                "sse_batches": sse.batches,
                "after_first_2s": {
                    k: v
                    for k, v in summarize_ms(settled).items()
                    if k in ("samples", "p50_ms", "p99_ms", "max_ms")
                },
            },
            "station_histogram": {
                "method": "waystation_ingest_latency_seconds: ingest queue entry → commit (misses broker, "
                "socket and link inbox); bucket-interpolated",
                **{
                    f"p{label}_ms": (
                        round(v * 1000, 1) if (v := histogram_quantile(hb, ha, q)) is not None else None
                    )
                    for label, q in (("50", 0.5), ("99", 0.99))
                },
                "count": int(after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)),
            },
            "station_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "commit_seconds_mean": _hist_mean(before, after, "waystation_ingest_commit_seconds"),
            "rows_per_batch_mean": _hist_mean(before, after, "waystation_ingest_batch_rows"),
        }
        log(
            f"[{self.kind}] latency at {rate:.0f} msg/s: p50 {result['publish_to_commit_sse']['p50_ms']} ms, "
            f"p99 {result['publish_to_commit_sse']['p99_ms']} ms ({len(lat)} samples)"
        )
        return result

    def verify(self, published: int) -> dict[str, Any]:
        expected = FIELDS * published
        # The committed-messages counter also counts redeliveries (after a reconnect the broker sends
        # unacknowledged messages again; they are stored once), so it can reach its target while unique
        # messages are still being written: wait until the row count stops moving before judging.
        rows, since = -1, time.monotonic()
        while time.monotonic() - since < 10.0:
            now_rows = int(self.store.scalar("select count(*) from datapoints"))
            if now_rows >= expected:
                rows = now_rows
                break
            if now_rows != rows:
                rows, since = now_rows, time.monotonic()
            time.sleep(0.5)
        m = scrape(self.http)
        channels = int(self.store.scalar("select count(*) from channels where source_id like 'sim-%'"))
        rollup_rows = int(self.store.scalar("select coalesce(sum(count), 0) from rollups_1m"))
        rollup_1h_rows = int(self.store.scalar("select coalesce(sum(count), 0) from rollups_1h"))
        rejected = {k: v for k, v in m.items() if k.startswith("waystation_mqtt_rejected_total") and v}
        result = {
            "published": published,
            "datapoints_expected": expected,
            "datapoints": rows,
            "lost": expected - rows,
            "channels": channels,
            "rollup_1m_count": rollup_rows,
            "rollup_1h_count": rollup_1h_rows,
            "duplicate_rows_metric": int(m.get("waystation_ingest_duplicate_rows_total", 0)),
            "write_failures_metric": int(m.get("waystation_ingest_write_failures_total", 0)),
            "committed_messages_metric": int(m.get("waystation_ingest_messages_total", 0)),
            "rejected": rejected,
        }
        result["ok"] = (
            rows == expected
            and channels == FIELDS * self.args.devices
            and rollup_rows == expected
            and rollup_1h_rows == expected
            and not rejected
        )
        if not result["ok"]:
            self.problems.append(f"verification failed: {result}")
        log(f"[{self.kind}] verify: {rows}/{expected} datapoints, {channels} channels, ok={result['ok']}")
        return result

    def stop_station(self) -> dict[str, Any]:
        t0 = time.monotonic()
        hwm = rss_hwm_mb(self.station.popen.pid)
        threads = self.station.ps.num_threads()
        self.children.stop(self.station, timeout=30)
        self.rss.stop()
        self.http.close()
        return {
            "rss_mb_idle": round(self.rss_idle / MB, 1),
            "rss_mb_peak_sampled": self.rss.peak_mb(),
            "rss_mb_peak_vmhwm": hwm,
            "rss_samples": len(self.rss.samples),
            "threads": threads,
            "shutdown_s": round(time.monotonic() - t0, 1),
            # uvicorn re-raises SIGTERM after a graceful shutdown, hence -15
            "exit_code": self.station.popen.returncode,
            "graceful_shutdown": "Application shutdown complete" in self.station.text(),
        }

    def cleanup(self) -> None:
        if getattr(self, "station", None) is not None:
            self.children.stop(self.station)
        if getattr(self, "broker", None) is not None:
            self.children.stop(self.broker)
        if self.pg_db:
            try:
                psql(PG_ADMIN_URL, f"drop database if exists {self.pg_db} with (force)")
                log(f"[{self.kind}] dropped database {self.pg_db}")
            except Exception as exc:
                log(f"[{self.kind}] dropping {self.pg_db} failed: {exc}")
            self.pg_db = None


def _hist_mean(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return round(total / count, 4) if count else None


def run_phase(args: argparse.Namespace, children: Children, workdir: Path, kind: str) -> dict[str, Any]:
    phase = Phase(args, children, workdir, kind)
    try:
        timings = phase.prepare()
        base = phase.baseline()
        base_v5 = phase.baseline(protocol=5)
        timings.update(phase.start_station())
        thr = phase.throughput(base["rate_per_s"])
        if thr["rate_per_s"] and base_v5["rate_per_s"]:
            thr["ratio_vs_mqtt5_baseline"] = round(thr["rate_per_s"] / base_v5["rate_per_s"], 3)
        lat = phase.latency()
        verify = phase.verify(thr["publisher"]["published"] + lat["publisher"]["published"])
        station = phase.stop_station()
        database = phase.store.version() if kind == "sqlite" else None
    finally:
        pg_version = None
        if phase.pg_db:
            with contextlib.suppress(Exception):
                pg_version = phase.store.version()
        phase.cleanup()
    ratio, p99 = thr["ratio"], lat["publish_to_commit_sse"]["p99_ms"]
    rss = max(v for v in (station["rss_mb_peak_sampled"], station["rss_mb_peak_vmhwm"]) if v is not None)
    targets = {
        "ratio_vs_baseline": {
            "min": TARGET_RATIO[kind],
            "value": ratio,
            "pass": ratio is not None and ratio >= TARGET_RATIO[kind],
        },
        "p99_publish_to_commit_ms": {
            "max": TARGET_P99_MS,
            "at_rate_per_s": args.latency_rate,
            "value": p99,
            "pass": p99 is not None and p99 <= TARGET_P99_MS,
        },
        "station_rss_mb_peak": {"max": TARGET_RSS_MB, "value": rss, "pass": rss <= TARGET_RSS_MB},
        "nothing_lost": {"value": verify["lost"], "pass": verify["ok"]},
    }
    return {
        "database": kind,
        "database_version": database or pg_version,
        "station_id": phase.station_id,
        "timings_s": timings,
        "baseline_paho_subscriber": base,
        "baseline_paho_subscriber_mqtt5": {
            "note": "secondary: the same bare subscriber speaking MQTT 5 (the station's protocol); not used "
            "for the ratio",
            **base_v5,
        },
        "throughput": thr,
        "latency": lat,
        "verify": verify,
        "station": station,
        "targets": targets,
        "pass": all(t["pass"] for t in targets.values()),
        "problems": phase.problems,
    }


def run(args: argparse.Namespace, children: Children, workdir: Path) -> dict[str, Any]:
    from waystation.config import Settings

    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    t0 = time.monotonic()
    results = {kind: run_phase(args, children, workdir, kind) for kind in kinds}
    defaults = Settings()
    summary = {
        kind: {
            "station_rate_per_s": r["throughput"]["rate_per_s"],
            "baseline_rate_per_s": r["baseline_paho_subscriber"]["rate_per_s"],
            "ratio": r["throughput"]["ratio"],
            "baseline_mqtt5_rate_per_s": r["baseline_paho_subscriber_mqtt5"]["rate_per_s"],
            "ratio_vs_mqtt5_baseline": r["throughput"].get("ratio_vs_mqtt5_baseline"),
            "p50_ms": r["latency"]["publish_to_commit_sse"]["p50_ms"],
            "p99_ms": r["latency"]["publish_to_commit_sse"]["p99_ms"],
            "rss_mb_peak": r["targets"]["station_rss_mb_peak"]["value"],
            "lost": r["verify"]["lost"],
            "pass": r["pass"],
            "failed_targets": [name for name, t in r["targets"].items() if not t["pass"]],
        }
        for kind, r in results.items()
    }
    return {
        "benchmark": "ingest",
        "scenario": {
            "devices": args.devices,
            "fields_per_message": FIELDS,
            "channels": FIELDS * args.devices,
            "throughput_messages": args.messages,
            "latency_rate_per_s": args.latency_rate,
            "latency_duration_s": args.duration,
            "publishers": args.publishers,
            "qos": 1,
            "steady_window": f"{int(WINDOW[0] * 100)} % → {int(WINDOW[1] * 100)} % of the messages",
            "broker": "mosquitto (private, loopback), "
            "max_inflight_messages 1000, max_queued_messages 1000000",
            "station_settings": {
                "ingest_batch_rows": defaults.ingest_batch_rows,
                "ingest_batch_ms": defaults.ingest_batch_ms,
                "ingest_max_queue_rows": defaults.ingest_max_queue_rows,
            },
            "profiled": bool(args.profile),
            "profiled_gil_only": bool(args.profile and args.profile_gil),
        },
        "summary": summary,
        "results": results,
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "mosquitto": mosquitto_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
        "elapsed_s": round(time.monotonic() - t0, 1),
        "pass": all(r["pass"] for r in results.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=300_000, help="messages in the throughput phase (300000)"
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of the fixed-rate latency phase (20)"
    )
    parser.add_argument("--latency-rate", type=float, default=5000.0, help="latency phase msg/s (5000)")
    parser.add_argument("--devices", type=int, default=20, help="devices, 3 channels each (20)")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes (1)")
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="attach py-spy to the station for this long in the throughput phase (perturbs it)",
    )
    parser.add_argument(
        "--profile-gil", action="store_true", help="with --profile: only sample the thread holding the GIL"
    )
    parser.add_argument("--stall-timeout", type=float, default=30.0, help="give up after no progress (30 s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, SQLite database)")
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/ingest.json")
    args = parser.parse_args()
    if not Path(MOSQUITTO).exists():
        parser.error(f"{MOSQUITTO} is not installed")
    if args.db != "sqlite" and not shutil.which("psql"):
        parser.error("psql is needed for the PostgreSQL phase")
    if args.profile and not (VENV_BIN / "py-spy").exists():
        parser.error("--profile needs py-spy in .venv (.venv/bin/pip install py-spy)")

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="waystation-bench-ingest-"))
    children = Children(workdir)
    ok = False
    try:
        result = run(args, children, workdir)
        ok = True
    except (KeyboardInterrupt, Interrupted):
        log("interrupted; stopping every child process")
        ok = True
        return 130
    except Exception as exc:
        log(f"FAILED: {exc}")
        for child in children.started:
            tail = child.tail()
            if tail:
                print(tail, file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        if args.keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    text = json.dumps(result, indent=2)
    output = args.output or BENCH / "results" / "ingest.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    print(text)
    log(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
