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
    PG_ADMIN_URL,
    PG_ASYNC_URL,
    VENV_BIN,
    Child,
    Children,
    Interrupted,
    Store,
    Watch,
    by_label,
    cpu_seconds,
    free_port,
    log,
    mosquitto_version,
    on_sigterm,
    psql,
    scrape,
    start_broker,
    station_env,
    wait_ready,
)
from ingest import histogram, histogram_quantile  # bench/ingest.py: Prometheus histogram arithmetic

TARGET_DEVICES = 1000
TARGET_STATION_CPU_PERCENT = 10.0  # of one core
TARGET_STATION_RSS_MB = 150.0
# The soak (`--devices 10000 --rate 0.0167 --telemetry-rate 2000 --duration 600`, issue 9):
TARGET_SOAK_RSS_GROWTH_PERCENT = 5.0
TARGET_SOAK_P99_MS = 250.0
TIMELINE_S = 10.0  # seconds per soak timeline window


# --- the run -----------------------------------------------------------------------------------------


def check_fd_limit(devices: int) -> dict[str, int]:
    """The simulator holds ~3 fds per device (socket + paho's wake-up socketpair), the broker ~1."""
    need = 3 * devices + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):  # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
            hard = need
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
    children: Children,
    args: argparse.Namespace,
    env: dict[str, str],
    mqtt_url: str,
    store: Store,
    prefix: str = "sim",
    devices: int | None = None,
) -> tuple[str, float]:
    """`waystation simulate` migrates and registers the fleet, then starts it; stop it once it says so."""
    t0 = time.monotonic()
    devices = args.devices if devices is None else devices
    sim = children.spawn(
        "register",
        [
            str(VENV_BIN / "waystation"),
            "simulate",
            "--prefix",
            prefix,
            "--devices",
            str(devices),
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
    found = store.scalar("SELECT id FROM stations WHERE is_default")
    if found is None:
        raise RuntimeError("no default station in the database after registration")
    station_id = str(found)
    # Both values are generated here (a uuid and a fixed prefix), not user input.
    count = int(
        store.scalar(
            f"SELECT count(*) FROM devices WHERE station_id = '{station_id}' AND id LIKE '{prefix}-%'"
        )
    )
    if count != devices:
        raise RuntimeError(f"expected {devices} registered devices, the database has {count}")
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


def pg_database_name() -> str:
    return f"ws_devices_{os.getpid()}"


def run(args: argparse.Namespace, children: Children, workdir: Path) -> dict[str, Any]:
    fd_limit = check_fd_limit(args.devices // args.simulators)  # per simulator process
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:
        http_port = free_port()
    data_dir = workdir / "data"
    env = station_env(data_dir, mqtt_port, http_port)
    pg_db = pg_database_name() if args.db == "postgresql" else None
    if pg_db:
        psql(PG_ADMIN_URL, f"create database {pg_db}")
        log(f"created database {pg_db}")
        env["WAYSTATION_DATABASE_URL"] = PG_ASYNC_URL.format(db=pg_db)
    store = Store(args.db, data_dir / "waystation.db", pg_db)
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
        # One simulator holds ~3 fds per device: big fleets are split over several simulator processes.
        share = args.devices // args.simulators
        prefixes = ["sim" if k == 0 else f"sim{k}" for k in range(args.simulators)]  # ids: <prefix>-0001
        register_s = 0.0
        for prefix in prefixes:
            station_id, seconds = register_fleet(children, args, env, mqtt_url, store, prefix, share)
            register_s += seconds

        station = children.spawn("station", [str(VENV_BIN / "waystation"), "run"], env)
        ready_s = wait_ready(station, client, 60)
        log(f"station ready in {ready_s:.1f}s (pid {station.popen.pid})")
        station_rss_idle = station.ps.memory_info().rss

        baseline = children.spawn(
            "baseline",
            [sys.executable, str(BENCH / "baseline_subscriber.py"), "127.0.0.1", str(mqtt_port)],
            env,
        )
        extra_sims = [
            children.spawn(
                f"simulator{k}",
                [
                    str(VENV_BIN / "waystation"),
                    "simulate",
                    "--prefix",
                    prefixes[k],
                    "--devices",
                    str(share),
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
            for k in range(1, args.simulators)
        ]
        sim = children.spawn(
            "simulator",
            [
                str(VENV_BIN / "waystation"),
                "simulate",
                "--prefix",
                "sim",
                "--devices",
                str(share),
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

        publisher = None
        if args.telemetry_rate > 0:
            # The soak's telemetry stream: state messages with ts at a fixed rate, on some of the fleet.
            ids = [f"sim-{i:04d}" for i in range(1, min(args.devices, args.telemetry_devices) + 1)]
            publisher = children.spawn(
                "telemetry",
                [
                    sys.executable,
                    str(BENCH / "ingest_publisher.py"),
                    "--port",
                    str(mqtt_port),
                    "--station",
                    station_id,
                    "--devices",
                    ",".join(ids),
                    "--messages",
                    str(int(args.telemetry_rate * (args.duration + 60))),
                    "--rate",
                    str(args.telemetry_rate),
                    "--ts-base",
                    str(int(time.time() * 1000)),
                ],
                env,
            )
            log(f"telemetry: {args.telemetry_rate:.0f} msg/s over {len(ids)} devices")
            time.sleep(max(args.settle, 20.0))  # past the station's first look at its task count

        watches = {c.name: Watch(c) for c in (station, sim, baseline, broker, *extra_sims)}
        before = scrape(client)
        t_wall_start = time.time()
        for w in watches.values():
            w.cpu_start = cpu_seconds(w.child.ps)
            w.sample()
        psutil.cpu_percent(percpu=True)  # start the machine-wide counter
        t_start = time.monotonic()
        log(f"measuring for {args.duration:.0f}s")
        next_sample = t_start + 1.0
        timeline: list[dict[str, Any]] = []  # soak: the station's figures per TIMELINE_S window
        window_start, window_metrics = t_start, before
        while time.monotonic() - t_start < args.duration:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += 1.0
            for w in watches.values():
                if not w.child.alive():
                    raise RuntimeError(f"{w.child.name} exited during the measurement:\n{w.child.tail()}")
                w.sample()
            if publisher is not None and time.monotonic() - window_start >= TIMELINE_S:
                now_metrics = scrape(client)
                timeline.append(
                    timeline_point(
                        time.monotonic() - t_start, window_metrics, now_metrics, watches["station"]
                    )
                )
                window_start, window_metrics = time.monotonic(), now_metrics
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
    soak = soak_figures(watches["station"], before, after) if publisher is not None else None
    if soak is not None:
        soak["timeline"] = timeline
        # Tasks come and go (a flush, a firing): compare the most seen in the window's first minute with
        # the most seen in its last, not two single samples.
        first = [p["asyncio_tasks"] for p in timeline if p["t_s"] <= 60] or [soak["asyncio_tasks_start"]]
        last = [p["asyncio_tasks"] for p in timeline if p["t_s"] >= wall - 60] or [soak["asyncio_tasks_end"]]
        soak["asyncio_tasks_max_first_minute"] = max(first)
        soak["asyncio_tasks_max_last_minute"] = max(last)
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
    if soak is not None:
        targets.update(
            {
                "station_rss_growth_percent": {
                    "limit": TARGET_SOAK_RSS_GROWTH_PERCENT,
                    "value": soak["rss_growth_percent"],
                    "pass": soak["rss_growth_percent"] < TARGET_SOAK_RSS_GROWTH_PERCENT,
                },
                "asyncio_tasks_growth": {
                    "limit": 0,
                    "value": soak["asyncio_tasks_max_last_minute"] - soak["asyncio_tasks_max_first_minute"],
                    "pass": soak["asyncio_tasks_max_last_minute"] <= soak["asyncio_tasks_max_first_minute"],
                },
                "ingest_latency_p99_ms": {
                    "limit": TARGET_SOAK_P99_MS,
                    "value": soak["ingest_latency_p99_ms"],
                    "pass": soak["ingest_latency_p99_ms"] is not None
                    and soak["ingest_latency_p99_ms"] < TARGET_SOAK_P99_MS,
                },
            }
        )
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
            "database": args.db,
            "broker": "mosquitto (private, loopback)",
            "expected_messages_per_s_approx": round(
                args.devices * (args.rate + 1.0 / args.heartbeat) + args.telemetry_rate, 1
            ),
            "telemetry_rate_per_s": args.telemetry_rate,
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
        "soak": soak,
        "simulator": reports["simulator"],
        "more_simulators": {
            name: r for name, r in reports.items() if name.startswith("simulator") and name != "simulator"
        },
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


def timeline_point(
    elapsed: float, before: dict[str, float], after: dict[str, float], station: Watch
) -> dict[str, Any]:
    """One window of the soak: arrival → commit p99, commit time p99, queue depth, tasks, RSS."""

    def p99_ms(name: str) -> float | None:
        value = histogram_quantile(histogram(before, name), histogram(after, name), 0.99)
        return round(value * 1000, 1) if value is not None else None

    return {
        "t_s": round(elapsed),
        "ingest_latency_p99_ms": p99_ms("waystation_ingest_latency_seconds"),
        "commit_p99_ms": p99_ms("waystation_ingest_commit_seconds"),
        "queue_rows": int(after.get("waystation_ingest_queue_rows", 0)),
        "asyncio_tasks": int(after.get("waystation_asyncio_tasks", 0)),
        "rss_mb": round(station.rss[-1] / MB, 1) if station.rss else None,
    }


def soak_figures(station: Watch, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """RSS growth (mean of the window's last minute against its first), asyncio tasks at both ends, and
    the station's arrival → commit latency over the window (from its own histogram)."""
    minute = max(1, min(60, len(station.rss) // 4))
    first = sum(station.rss[:minute]) / minute
    last = sum(station.rss[-minute:]) / minute
    p99 = histogram_quantile(
        histogram(before, "waystation_ingest_latency_seconds"),
        histogram(after, "waystation_ingest_latency_seconds"),
        0.99,
    )
    rows = after.get("waystation_ingest_rows_total", 0) - before.get("waystation_ingest_rows_total", 0)
    return {
        "rss_mb_first_minute": round(first / MB, 1),
        "rss_mb_last_minute": round(last / MB, 1),
        "rss_growth_percent": round(100 * (last - first) / first, 2),
        "asyncio_tasks_by_coroutine_change": {
            name: int(after.get(key, 0) - before.get(key, 0))
            for key in sorted(set(before) | set(after))
            if key.startswith("waystation_asyncio_tasks_by_coroutine{")
            and (name := key.split('"')[1])
            and after.get(key, 0) != before.get(key, 0)
        },
        "asyncio_tasks_start": int(before.get("waystation_asyncio_tasks", 0)),
        "asyncio_tasks_end": int(after.get("waystation_asyncio_tasks", 0)),
        "ingest_latency_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
        "ingest_rows_committed": int(rows),
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
        "--telemetry-rate",
        type=float,
        default=0.0,
        help="soak: also publish this many state messages/s with ts during the window (0: off)",
    )
    parser.add_argument(
        "--telemetry-devices", type=int, default=20, help="soak: devices the telemetry goes to (20)"
    )
    parser.add_argument(
        "--simulators", type=int, default=1, help="simulator processes sharing the fleet (1; ~3 fds/device)"
    )
    parser.add_argument(
        "--db", choices=["sqlite", "postgresql"], default="sqlite", help="the station's database (sqlite)"
    )
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
        if args.db == "postgresql":
            with contextlib.suppress(RuntimeError):
                psql(PG_ADMIN_URL, f"drop database if exists {pg_database_name()} with (force)")
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
