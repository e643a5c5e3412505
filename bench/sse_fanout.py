"""SSE fan-out: how fast a device event reaches many browsers at once.

A station (SQLite, a private Mosquitto) and one device that publishes `event` messages carrying their
send time. N clients follow `GET /api/v1/events/stream?types=device.event`; each records when each
event arrives. The same run first measures a single client (the baseline: what one stream costs),
then N clients. Reports delivery latency (publish → arrival in the client) percentiles, events each
client missed, and the station's CPU and peak RSS.

    .venv/bin/python bench/sse_fanout.py --clients 1000 --rate 10 --seconds 20

The clients run in this process (asyncio + httpx), so on a small machine part of the latency is the
clients' own parsing; the baseline shows the floor. JSON on stdout and in bench/results/sse-fanout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from _common import (
    BENCH,
    VENV_BIN,
    Children,
    cpu_seconds,
    free_port,
    log,
    mosquitto_version,
    rss_hwm_mb,
    start_broker,
    station_env,
    wait_ready,
)

PASSWORD = "bench-password-1"
DEVICE = "fan-1"


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(latencies: list[float]) -> dict[str, Any]:
    s = sorted(latencies)
    out: dict[str, Any] = {"samples": len(s)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        v = percentile(s, q)
        out[f"{name}_ms"] = round(v * 1000, 1) if v is not None else None
    return out


class Client:
    """One browser's event stream: arrival latency of every `device.event` with a `sent` stamp."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.seen: set[int] = set()
        self.ready = asyncio.Event()
        self.error: str | None = None

    async def follow(self, http: httpx.AsyncClient, token: str) -> None:
        try:
            async with http.stream(
                "GET",
                "/api/v1/events/stream",
                params={"types": "device.event"},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                response.raise_for_status()
                self.ready.set()
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    now = time.time()
                    data = json.loads(line[5:])
                    inner = data.get("data") or {}
                    if "sent" in inner and "seq" in inner:
                        self.latencies.append(now - float(inner["sent"]))
                        self.seen.add(int(inner["seq"]))
        except (httpx.HTTPError, asyncio.CancelledError) as exc:
            if not self.ready.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()


async def phase(
    base_url: str, token: str, mqtt_port: int, station_id: str, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as http:
        clients = [Client() for _ in range(n)]
        tasks = []
        for i, c in enumerate(clients):
            tasks.append(asyncio.create_task(c.follow(http, token)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # open the streams in waves, as browsers would
        await asyncio.gather(*(c.ready.wait() for c in clients))
        failed = [c.error for c in clients if c.error]
        log(f"{n} clients connected ({len(failed)} failed)")
        await asyncio.sleep(1.0)
        count = int(args.rate * args.seconds)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{DEVICE}-bench")
        pub.connect("127.0.0.1", mqtt_port)
        pub.loop_start()
        topic = f"station/{station_id}/device/{DEVICE}/event"
        started = time.monotonic()
        for seq in range(count):
            payload = {"event": "device_event", "data": {"seq": seq, "sent": time.time()}}
            pub.publish(topic, json.dumps(payload), qos=1)
            delay = started + (seq + 1) / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(args.drain)
        pub.loop_stop()
        pub.disconnect()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [x for c in clients for x in c.latencies]
    missed = [count - len(c.seen) for c in clients if not c.error]
    return {
        "clients": n,
        "clients_failed": len(failed),
        "events_published": count,
        "deliveries": len(latencies),
        "deliveries_expected": count * (n - len(failed)),
        "clients_missing_events": sum(1 for m in missed if m),
        "latency": summarize(latencies),
    }


async def run(args: argparse.Namespace, children: Children, workdir: Path) -> dict[str, Any]:
    mqtt_port, http_port = free_port(), free_port()
    start_broker(children, workdir, mqtt_port)
    env = station_env(workdir / "data", mqtt_port, http_port)
    subprocess.run(
        [str(VENV_BIN / "waystation"), "user", "create", "admin", "--role", "owner", "--password-stdin"],
        input=PASSWORD.encode(),
        env=env,
        check=True,
        capture_output=True,
    )
    station = children.spawn("station", [str(VENV_BIN / "waystation"), "run"], env=env)
    base_url = f"http://127.0.0.1:{http_port}"
    with httpx.Client(base_url=base_url) as sync:
        wait_ready(station, sync, 60)
        token = sync.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        station_id = sync.get("/api/v1/station", headers=headers).json()["id"]
        r = sync.post("/api/v1/devices", headers=headers, json={"id": DEVICE, "type": "climate"})
        r.raise_for_status()
    results = {}
    for n in (1, args.clients):
        cpu_before = cpu_seconds(station.ps)
        t0 = time.monotonic()
        results[f"clients_{n}"] = await phase(base_url, token, mqtt_port, station_id, args, n)
        elapsed = time.monotonic() - t0
        results[f"clients_{n}"]["station_cpu_percent"] = round(
            100 * (cpu_seconds(station.ps) - cpu_before) / elapsed, 1
        )
        results[f"clients_{n}"]["station_peak_rss_mb"] = rss_hwm_mb(station.popen.pid)
        log(f"{n} clients: {results[f'clients_{n}']['latency']}")
    base = results["clients_1"]["latency"]["p99_ms"]
    many = results[f"clients_{args.clients}"]["latency"]["p99_ms"]
    return {
        "benchmark": "sse_fanout",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "mosquitto": mosquitto_version(),
        "rate_per_second": args.rate,
        "seconds": args.seconds,
        **results,
        "p99_ratio_to_baseline": round(many / base, 2) if base and many else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="concurrent SSE clients (1000)")
    parser.add_argument("--rate", type=float, default=10.0, help="device events per second (10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long events are published (20)")
    parser.add_argument("--drain", type=float, default=5.0, help="wait this long for the last events (5)")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "sse-fanout.json")
    args = parser.parse_args()
    # A thousand streams need a thousand sockets here and in the station (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.clients + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="ws-bench-sse-") as tmp:
        workdir = Path(tmp)
        children = Children(workdir)
        try:
            result = asyncio.run(run(args, children, workdir))
        finally:
            children.stop_all()
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
