"""How many simulated devices one station process holds: station CPU and RSS under a device fleet.

Not a pytest test. Run it from the project root with the project's virtualenv:

    .venv/bin/python bench/devices.py                      # 1,000 devices, 60 s window
    .venv/bin/python bench/devices.py --devices 50 --duration 15

What it does, each piece a separate process so psutil can measure it on its own:

1. starts a private Mosquitto on a free loopback port (never 1883);
2. runs `waystation simulate` once to migrate the database and register the fleet, then stops it
   (the station loads its directory of known devices at start-up, so they must exist before it starts);
3. starts the station (`waystation run`, SQLite in a temp data dir, the private broker) and waits
   for `/readyz`;
4. starts a bare paho-mqtt subscriber on `station/#` (bench/baseline_subscriber.py) as the baseline:
   the cost of merely receiving the same messages in Python;
5. starts the fleet (`waystation simulate --no-register`), waits until `waystation_devices_online`
   reaches N, lets it settle, then measures over `--duration` seconds: CPU % of one core (cpu_times
   delta / wall time) and RSS (sampled every second) of the station, the simulator, the baseline and
   the broker, and messages accepted per second from `/metrics`.

One JSON object goes to stdout and to bench/results/devices-<N>.json; progress goes to stderr.
Every child is stopped on exit, on errors and on Ctrl-C (and gets SIGTERM if this process dies).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from _common import (
    BENCH,
    MB,
    MOSQUITTO,
    VENV_BIN,
    Child,
    Children,
    Interrupted,
    Watch,
    by_label,
    cpu_seconds,
    free_port,
    log,
    mosquitto_version,
    on_sigterm,
    scrape,
    start_broker,
    station_env,
    wait_ready,
)

TARGET_DEVICES = 1000
TARGET_STATION_CPU_PERCENT = 10.0  # of one core
TARGET_STATION_RSS_MB = 150.0


# --- the run -----------------------------------------------------------------------------------------


def check_fd_limit(devices: int) -> dict[str, int]:
    """The simulator holds ~3 fds per device (socket + paho's wake-up socketpair), the broker ~1."""
    need = 3 * devices + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or hard >= need):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        soft = need
    if soft < need:
        raise RuntimeError(
            f"open-file limit {soft} (hard {hard}) is below the ~{need} that {devices} "
            f"devices need; raise `ulimit -n`"
        )
    return {"soft": soft, "hard": hard, "needed_approx": need}


def register_fleet(
    children: Children, args: argparse.Namespace, env: dict[str, str], mqtt_url: str, db_path: Path
) -> tuple[str, float]:
    """`waystation simulate` migrates and registers the fleet, then starts it; stop it once it says so."""
    t0 = time.monotonic()
    sim = children.spawn(
        "register",
        [
            str(VENV_BIN / "waystation"),
            "simulate",
            "--devices",
            str(args.devices),
            "--rate",
            str(args.rate),
            "--heartbeat",
            str(args.heartbeat),
            "--mqtt",
            mqtt_url,
        ],
        env,
    )
    deadline = time.monotonic() + 120
    while "simulating" not in sim.text() and sim.alive():
        if time.monotonic() > deadline:
            raise RuntimeError("`waystation simulate` did not register the fleet within 120 s")
        time.sleep(0.1)
    children.stop(sim)
    if "simulating" not in sim.text():
        raise RuntimeError(f"`waystation simulate` failed to register the fleet:\n{sim.tail()}")
    seconds = time.monotonic() - t0
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT id FROM stations WHERE is_default").fetchone()
        if row is None:
            raise RuntimeError("no default station in the database after registration")
        station_id = str(row[0])
        count = db.execute(
            "SELECT count(*) FROM devices WHERE station_id = ? AND id LIKE 'sim-%'", (station_id,)
        ).fetchone()[0]
    if count != args.devices:
        raise RuntimeError(f"expected {args.devices} registered devices, the database has {count}")
    log(f"registered {count} devices in station {station_id} ({seconds:.1f}s)")
    return station_id, seconds


def wait_online(args: argparse.Namespace, station: Child, sim: Child, client: httpx.Client) -> float:
    t0 = time.monotonic()
    last_report = 0.0
    while True:
        for child in (station, sim):
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with code {child.popen.returncode}:\n{child.tail()}")
        metrics = scrape(client)
        online = int(metrics.get("waystation_devices_online", 0))
        elapsed = time.monotonic() - t0
        if online >= args.devices:
            return elapsed
        if elapsed > args.warmup:
            unknown = by_label(metrics, "waystation_mqtt_rejected_total").get("unknown_device", 0)
            raise RuntimeError(
                f"only {online}/{args.devices} devices online after {args.warmup:.0f}s "
                f"(unknown_device rejections: {unknown:.0f})\n{sim.tail()}"
            )
        if elapsed - last_report >= 5:
            last_report = elapsed
            log(f"warm-up: {online}/{args.devices} devices online after {elapsed:.0f}s")
        time.sleep(1.0)


def run(args: argparse.Namespace, children: Children, workdir: Path) -> dict[str, Any]:
    fd_limit = check_fd_limit(args.devices)
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:
        http_port = free_port()
    data_dir = workdir / "data"
    env = station_env(data_dir, mqtt_port, http_port)
    mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"

    log(f"mosquitto on 127.0.0.1:{mqtt_port}, station HTTP on 127.0.0.1:{http_port}, work dir {workdir}")
    broker = start_broker(children, workdir, mqtt_port)
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}") as client:
        # `waystation simulate` cannot register devices in a fresh database: the device types are
        # seeded by the station's start-up, not by the migrations, so the station must have run once.
        # Own HTTP port: `waystation run` refuses a port with TIME_WAIT sockets left by a previous run.
        init_port = free_port()
        first = children.spawn(
            "station-init",
            [str(VENV_BIN / "waystation"), "run"],
            {**env, "WAYSTATION_HTTP_PORT": str(init_port)},
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{init_port}") as init_client:
            init_s = wait_ready(first, init_client, 60)
        children.stop(first)
        log(f"station initialised the database in {init_s:.1f}s")
        station_id, register_s = register_fleet(children, args, env, mqtt_url, data_dir / "waystation.db")

        station = children.spawn("station", [str(VENV_BIN / "waystation"), "run"], env)
        ready_s = wait_ready(station, client, 60)
        log(f"station ready in {ready_s:.1f}s (pid {station.popen.pid})")
        station_rss_idle = station.ps.memory_info().rss

        baseline = children.spawn(
            "baseline",
            [sys.executable, str(BENCH / "baseline_subscriber.py"), "127.0.0.1", str(mqtt_port)],
            env,
        )
        sim = children.spawn(
            "simulator",
            [
                str(VENV_BIN / "waystation"),
                "simulate",
                "--devices",
                str(args.devices),
                "--rate",
                str(args.rate),
                "--heartbeat",
                str(args.heartbeat),
                "--mqtt",
                mqtt_url,
                "--station",
                station_id,
                "--no-register",
            ],
            env,
        )
        warmup_s = wait_online(args, station, sim, client)
        log(f"all {args.devices} devices online after {warmup_s:.1f}s; settling {args.settle:.0f}s")
        time.sleep(args.settle)

        watches = {c.name: Watch(c) for c in (station, sim, baseline, broker)}
        before = scrape(client)
        t_wall_start = time.time()
        for w in watches.values():
            w.cpu_start = cpu_seconds(w.child.ps)
            w.sample()
        psutil.cpu_percent(percpu=True)  # start the machine-wide counter
        t_start = time.monotonic()
        log(f"measuring for {args.duration:.0f}s")
        next_sample = t_start + 1.0
        while time.monotonic() - t_start < args.duration:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += 1.0
            for w in watches.values():
                if not w.child.alive():
                    raise RuntimeError(f"{w.child.name} exited during the measurement:\n{w.child.tail()}")
                w.sample()
        for w in watches.values():
            w.cpu_end = cpu_seconds(w.child.ps)
        wall = time.monotonic() - t_start
        machine_cpu = psutil.cpu_percent(percpu=True)
        after = scrape(client)
        t_wall_end = time.time()
        time.sleep(1.2)  # one more baseline report past the window's end

    accepted_before = by_label(before, "waystation_mqtt_messages_total")
    accepted_after = by_label(after, "waystation_mqtt_messages_total")
    rejected_before = by_label(before, "waystation_mqtt_rejected_total")
    rejected_after = by_label(after, "waystation_mqtt_rejected_total")
    accepted_by_kind = {
        k: round((v - accepted_before.get(k, 0)) / wall, 2) for k, v in sorted(accepted_after.items())
    }
    rejected_by_reason = {
        k: round((v - rejected_before.get(k, 0)) / wall, 2)
        for k, v in sorted(rejected_after.items())
        if v - rejected_before.get(k, 0)
    }
    rejected_total = {k: v for k, v in rejected_after.items() if v}
    flushes = after.get("waystation_device_flushes_total", 0) - before.get(
        "waystation_device_flushes_total", 0
    )

    reports = {name: w.report(wall) for name, w in watches.items()}
    station_report = reports["station"]
    station_report["rss_mb_idle_before_fleet"] = round(station_rss_idle / MB, 1)
    station_report["devices_online_start"] = int(before.get("waystation_devices_online", 0))
    station_report["devices_online_end"] = int(after.get("waystation_devices_online", 0))
    station_report["flushes_per_s"] = round(flushes / wall, 2)
    baseline_rate = _baseline_rate(baseline, t_wall_start, t_wall_end)
    reports["baseline"]["received_per_s"] = baseline_rate

    cpu = station_report["cpu_percent_of_one_core"]
    rss_peak = station_report["rss_mb_peak_in_window"]
    targets = {
        "station_cpu_percent_of_one_core": {
            "limit": TARGET_STATION_CPU_PERCENT,
            "value": cpu,
            "pass": cpu < TARGET_STATION_CPU_PERCENT,
        },
        "station_rss_mb_peak_in_window": {
            "limit": TARGET_STATION_RSS_MB,
            "value": rss_peak,
            "pass": rss_peak is not None and rss_peak < TARGET_STATION_RSS_MB,
        },
    }
    problems = []
    if station_report["devices_online_end"] < args.devices:
        problems.append(
            f"only {station_report['devices_online_end']}/{args.devices} devices online at the end"
        )
    if rejected_total:
        problems.append(f"station rejected messages (totals since start): {rejected_total}")
    if args.devices != TARGET_DEVICES:
        problems.append(f"targets are defined for {TARGET_DEVICES} devices; this run had {args.devices}")

    return {
        "benchmark": "devices",
        "scenario": {
            "devices": args.devices,
            "state_rate_per_device_per_s": args.rate,
            "heartbeat_interval_s": args.heartbeat,
            "measure_window_s": round(wall, 1),
            "settle_s": args.settle,
            "database": "sqlite",
            "broker": "mosquitto (private, loopback)",
            "expected_messages_per_s_approx": round(args.devices * (args.rate + 1.0 / args.heartbeat), 1),
        },
        "timings_s": {
            "station_init": round(init_s, 1),
            "register": round(register_s, 1),
            "station_ready": round(ready_s, 1),
            "warmup_all_online": round(warmup_s, 1),
        },
        "messages": {
            "accepted_per_s": round(sum(accepted_by_kind.values()), 2),
            "accepted_per_s_by_kind": accepted_by_kind,
            "rejected_per_s_by_reason": rejected_by_reason,
            "baseline_received_per_s": baseline_rate,
        },
        "station": station_report,
        "simulator": reports["simulator"],
        "baseline_paho_subscriber": reports["baseline"],
        "mosquitto": reports["mosquitto"],
        "machine": {
            "cpus": psutil.cpu_count(),
            "cpu_percent_per_core_during_window": machine_cpu,
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "mosquitto": mosquitto_version(),
            "open_file_limit": fd_limit,
        },
        "targets": targets,
        "pass": all(t["pass"] for t in targets.values()),
        "problems": problems,
    }


def _baseline_rate(baseline: Child, start: float, end: float) -> float | None:
    """Messages/s the baseline received between its once-a-second reports nearest the window's ends."""
    reports = [(float(t), int(n)) for n, t in re.findall(r"received (\d+) ([\d.]+)", baseline.text("stdout"))]
    if len(reports) < 2:
        return None
    first = min(reports, key=lambda r: abs(r[0] - start))
    last = min(reports, key=lambda r: abs(r[0] - end))
    if last[0] <= first[0]:
        return None
    return round((last[1] - first[1]) / (last[0] - first[0]), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measurement window in seconds (default 60)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=180.0,
        help="seconds to wait for all devices to be online (default 180)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds to wait after all are online, before measuring (default 10)",
    )
    parser.add_argument("--rate", type=float, default=0.1, help="state messages per second per device (0.1)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats (30)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, database) for inspection"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file to write (default bench/results/devices-<N>.json)",
    )
    args = parser.parse_args()
    if not Path(MOSQUITTO).exists():
        parser.error(f"{MOSQUITTO} is not installed")

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="waystation-bench-"))
    children = Children(workdir)
    ok = False
    try:
        result = run(args, children, workdir)
        ok = True
    except (KeyboardInterrupt, Interrupted):
        log("interrupted; stopping every child process")
        ok = True  # nothing to inspect
        return 130
    except Exception as exc:
        log(f"FAILED: {exc}")
        for child in children.started:
            tail = child.tail()
            if tail:
                print(tail, file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        if args.keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    text = json.dumps(result, indent=2)
    output = args.output or BENCH / "results" / f"devices-{args.devices}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    print(text)
    log(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
