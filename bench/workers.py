"""Scale-out: committed ingest rate with `waystation run --workers N` on PostgreSQL (docs/scaling.md).

Not a pytest test. Run it from the project root with the project's virtualenv:

    .venv/bin/python bench/workers.py                        # 1 then 2 workers, 200,000 messages each
    .venv/bin/python bench/workers.py --workers 1,2,3 --messages 100000

For each worker count, from scratch (a fresh PostgreSQL database `ws_bench_w<N>_<pid>` on
127.0.0.1:5432, dropped afterwards, and a fresh private Mosquitto on a free loopback port):

1. `waystation simulate --type sensor --duration 1` registers `--devices` sensors;
2. BASELINE (same run, same broker): bench/baseline_subscriber.py, a bare paho-mqtt MQTT 5 subscriber,
   receives the `--messages` state messages published flat out by bench/ingest_publisher.py;
3. `waystation run --workers N` starts; once every worker holds its slot (pg_locks) and answers,
   the same messages are published flat out;
4. the committed rate is the slope of the stored rows (read from `rollups_1m`, 3 rows per message)
   between 10 % and 90 % of the messages; every message must be stored exactly once.

Target (issue 9): 2 workers >= 1.6 x 1 worker. One JSON object goes to stdout and to
bench/results/workers.json; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _common import (
    PG_ADMIN_URL,
    PG_ASYNC_URL,
    PG_URL,
    VENV_BIN,
    Children,
    Interrupted,
    free_port,
    log,
    mosquitto_version,
    on_sigterm,
    psql,
    start_broker,
    station_env,
    wait_ready,
)
from ingest import FIELDS, steady_rate

RESULTS = Path(__file__).resolve().parent / "results" / "workers.json"
TARGET_SPEEDUP = 1.6
SLOT_BASE = 0x57A7_1000  # waystation.cluster.locks.SLOT_LOCK_BASE


def scalar(db: str, sql: str) -> str:
    return psql(PG_URL.format(db=db), sql).splitlines()[0]


def publish(
    children: Children, env: dict[str, str], port: int, station: str, devices: list[str], n: int, name: str
) -> dict[str, Any]:
    pub = children.spawn(
        name,
        [
            sys.executable,
            str(Path(__file__).parent / "ingest_publisher.py"),
            "--port",
            str(port),
            "--station",
            station,
            "--devices",
            ",".join(devices),
            "--messages",
            str(n),
            "--ts-base",
            str(int(time.time() * 1000) - 3_600_000),
        ],
        env,
    )
    pub.popen.wait(timeout=600)
    summary: dict[str, Any] = json.loads(pub.text("stdout").strip().splitlines()[-1])
    children.stop(pub)
    return summary


def baseline(
    children: Children, env: dict[str, str], port: int, station: str, devices: list[str], n: int
) -> dict[str, Any]:
    sub = children.spawn(
        "baseline",
        [
            sys.executable,
            str(Path(__file__).parent / "baseline_subscriber.py"),
            "127.0.0.1",
            str(port),
            "0.1",
            "5",
        ],
        env,
    )
    deadline = time.monotonic() + 15
    while "subscribed" not in sub.text("stdout"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the baseline did not subscribe:\n{sub.tail()}")
        time.sleep(0.05)
    publish(children, env, port, station, devices, n, "baseline-publisher")
    deadline = time.monotonic() + 120
    while True:
        reports = [
            (float(t), float(c))
            for c, t in (
                line.split()[1:3] for line in sub.text("stdout").splitlines() if line.startswith("received")
            )
        ]
        if reports and reports[-1][1] >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the baseline did not receive every message")
        time.sleep(0.2)
    children.stop(sub)
    return steady_rate(reports, n)


def run_workers(args: argparse.Namespace, workers: int, workdir: Path) -> dict[str, Any]:
    db = f"ws_bench_w{workers}_{os.getpid()}"
    children = Children(workdir)
    port, http_port = free_port(), free_port()
    psql(PG_ADMIN_URL, f"create database {db}")
    try:
        start_broker(children, workdir, port, max_queued_messages=1_000_000, max_inflight_messages=1000)
        env = station_env(workdir / "data", port, http_port)
        env["WAYSTATION_DATABASE_URL"] = PG_ASYNC_URL.format(db=db)
        env["WAYSTATION_CLUSTER"] = "on"  # one worker measured as a worker too (shared subscription, bridge)
        out = children.spawn(
            "simulate",
            [
                str(VENV_BIN / "waystation"),
                "simulate",
                "--devices",
                str(args.devices),
                "--type",
                "sensor",
                "--duration",
                "1",
                "--mqtt",
                f"mqtt://127.0.0.1:{port}",
            ],
            env,
        )
        out.popen.wait(120)
        station = scalar(db, "select id from stations limit 1")
        devices = [
            row for row in psql(PG_URL.format(db=db), "select id from devices order by id").splitlines()
        ]
        base = baseline(children, env, port, station, devices, args.messages)
        log(f"[{workers} worker(s)] baseline {base['rate_per_s']} msg/s")

        station_proc = children.spawn(
            "station", [str(VENV_BIN / "waystation"), "run", "--workers", str(workers)], env
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}") as client:
            wait_ready(station_proc, client, 120)
        deadline = time.monotonic() + 120
        slots = f"select count(*) from pg_locks where locktype = 'advisory' and objid >= {SLOT_BASE}"
        while int(scalar(db, slots)) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker took a slot:\n{station_proc.tail()}")
            time.sleep(0.2)
        time.sleep(3.0)  # the last worker's subscription
        t0 = time.time()
        samples: list[tuple[float, float]] = []
        pub = children.spawn(
            "publisher",
            [
                sys.executable,
                str(Path(__file__).parent / "ingest_publisher.py"),
                "--port",
                str(port),
                "--station",
                station,
                "--devices",
                ",".join(devices),
                "--messages",
                str(args.messages),
                "--ts-base",
                str(int(t0 * 1000) - 7_200_000),
            ],
            env,
        )
        deadline = time.monotonic() + 600
        stored = 0.0
        while stored < args.messages and time.monotonic() < deadline:
            rows = scalar(db, "select coalesce(sum(count), 0) from rollups_1m")
            stored = int(rows) / FIELDS
            samples.append((time.time(), stored))
            time.sleep(0.2)
        pub.popen.wait(60)
        rate = steady_rate(samples, args.messages)
        rows = int(scalar(db, "select count(*) from datapoints"))
        children.stop(station_proc, timeout=30)
        result = {
            "workers": workers,
            **rate,
            "overall_rate_per_s": round(stored / max(samples[-1][0] - t0, 1e-9), 1),
            "baseline_mqtt5": base,
            "ratio_vs_baseline": round(rate["rate_per_s"] / base["rate_per_s"], 3)
            if rate["rate_per_s"] and base["rate_per_s"]
            else None,
            "rows": rows,
            "lost_or_duplicated": rows - FIELDS * args.messages,
        }
        log(f"[{workers} worker(s)] {rate['rate_per_s']} msg/s committed; rows {rows}")
        return result
    finally:
        children.stop_all()
        psql(PG_ADMIN_URL, f"drop database if exists {db} with (force)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=20)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    runs: dict[str, Any] = {}
    try:
        for n in (int(w) for w in args.workers.split(",")):
            runs[str(n)] = run_workers(args, n, Path(tempfile.mkdtemp(prefix=f"ws-bench-w{n}-")))
    except Interrupted:
        log("interrupted")
        return 1
    one, two = runs.get("1", {}).get("rate_per_s"), runs.get("2", {}).get("rate_per_s")
    speedup = round(two / one, 2) if one and two else None
    result = {
        "benchmark": "workers",
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "mosquitto": mosquitto_version(),
        },
        "scenario": {
            "messages": args.messages,
            "devices": args.devices,
            "fields_per_message": FIELDS,
            "qos": 1,
        },
        "runs": runs,
        "summary": {
            "speedup_2_vs_1": speedup,
            "target": TARGET_SPEEDUP,
            "pass": speedup is not None and speedup >= TARGET_SPEEDUP,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
