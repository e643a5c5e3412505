"""Helpers shared by the benchmarks: child processes, a private Mosquitto, the station's /metrics.

Not a benchmark itself. The scripts in bench/ are run as `python bench/<name>.py`, so this directory
is on `sys.path` and they import it as `_common`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
MOSQUITTO = "/usr/sbin/mosquitto"
MB = 1024 * 1024


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    if port == 1883:  # the system broker's port; never ours
        return free_port()
    return port


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Interrupted(Exception):
    pass


def on_sigterm(_signum: int, _frame: object) -> None:
    raise Interrupted("terminated")


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self, which: str = "stderr") -> str:
        path = self.stderr if which == "stderr" else self.stdout
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        out = []
        for which in ("stdout", "stderr"):
            text = self.text(which).strip()
            if text:
                out.append(f"--- {self.name} {which} (last {lines} lines) ---")
                out.extend(text.splitlines()[-lines:])
        return "\n".join(out)


class Children:
    """Every process this benchmark started; stopped newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Child] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        stdout = self.workdir / f"{name}.stdout"
        stderr = self.workdir / f"{name}.stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, stdout, stderr)
        self.started.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{child.name} ignored SIGTERM for {timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    child.popen.kill()
                child.popen.wait()
        if child in self.started:
            self.started.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.started)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                log(f"stopping {child.name} failed: {exc}")


# --- the broker and the station --------------------------------------------------------------------


def start_broker(
    children: Children,
    workdir: Path,
    port: int,
    *,
    name: str = "mosquitto",
    max_queued_messages: int = 100_000,
    max_inflight_messages: int | None = None,
) -> Child:
    conf = workdir / f"{name}.conf"
    inflight = f"max_inflight_messages {max_inflight_messages}\n" if max_inflight_messages is not None else ""
    conf.write_text(
        f"per_listener_settings false\n"
        f"listener {port} 127.0.0.1\n"
        f"max_connections -1\n"
        f"allow_anonymous true\n"
        f"persistence false\n"
        f"max_queued_messages {max_queued_messages}\n"
        f"set_tcp_nodelay true\n"  # as the embedded broker (src/waystation/broker/embedded.py)
        f"{inflight}"
        # Run as whoever we are: a root mosquitto otherwise switches to user `mosquitto`, which clears
        # its parent-death signal (and could not write into our 0700 temp dir).
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"log_dest stderr\n"
        f"log_type error\nlog_type warning\n"
    )
    broker = children.spawn(name, [MOSQUITTO, "-c", str(conf)])
    wait_port(port, 10)
    return broker


def station_env(data_dir: Path, mqtt_port: int, http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env.update(
        {
            "WAYSTATION_DATA_DIR": str(data_dir),
            "WAYSTATION_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "WAYSTATION_HTTP_PORT": str(http_port),
            "COLUMNS": "300",  # keep rich from wrapping the CLI's messages
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def wait_ready(station: Child, client: httpx.Client, timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        if not station.alive():
            raise RuntimeError(f"the station exited with code {station.popen.returncode}:\n{station.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"/readyz did not answer 200 within {timeout:.0f}s:\n{station.tail()}")
        time.sleep(0.2)


def mosquitto_version() -> str | None:
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else None


# --- measuring ---------------------------------------------------------------------------------------


def scrape(client: httpx.Client) -> dict[str, float]:
    """`/metrics` as {'name{labels}': value} (only the waystation_ series)."""
    r = client.get("/metrics", timeout=10)
    r.raise_for_status()
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("waystation_"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def by_label(metrics: dict[str, float], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        m = re.fullmatch(rf'{name}\{{\w+="([^"]*)"\}}', key)
        if m:
            out[m.group(1)] = value
    return out


def cpu_seconds(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return float(t.user + t.system)


def rss_hwm_mb(pid: int) -> float | None:
    """The kernel's peak RSS of the process since it started (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@dataclass
class Watch:
    child: Child
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rss: list[int] = field(default_factory=list)

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.rss.append(self.child.ps.memory_info().rss)

    def report(self, wall: float) -> dict[str, Any]:
        ps = self.child.ps
        out: dict[str, Any] = {
            "pid": self.child.popen.pid,
            "cpu_percent_of_one_core": round(100.0 * (self.cpu_end - self.cpu_start) / wall, 2),
            "cpu_seconds": round(self.cpu_end - self.cpu_start, 2),
            "rss_mb": round(self.rss[-1] / MB, 1) if self.rss else None,
            "rss_mb_peak_in_window": round(max(self.rss) / MB, 1) if self.rss else None,
            "rss_mb_min_in_window": round(min(self.rss) / MB, 1) if self.rss else None,
            "rss_mb_peak_since_start": rss_hwm_mb(self.child.popen.pid),
        }
        with contextlib.suppress(psutil.Error):
            out["threads"] = ps.num_threads()
            out["open_fds"] = ps.num_fds()
            out["child_processes"] = len(ps.children(recursive=True))
        return out


# PostgreSQL for benchmarks that run on it: the local server (trust auth), one fresh database per run.
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"
PG_ASYNC_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"


def psql(url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {sql}\n{out.stderr.strip()}")
    return out.stdout.strip()


class Store:
    """Read-only queries against the station's database, from outside the station."""

    def __init__(self, kind: str, sqlite_path: Path | None = None, pg_db: str | None = None) -> None:
        self.kind, self.sqlite_path, self.pg_db = kind, sqlite_path, pg_db

    def scalar(self, sql: str) -> Any:
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True)) as db:
                row = db.execute(sql).fetchone()
                return row[0] if row else None
        text = psql(PG_URL.format(db=self.pg_db), sql)
        return text.splitlines()[0] if text else None

    def version(self) -> str:
        if self.kind == "sqlite":
            return sqlite3.sqlite_version
        return str(self.scalar("show server_version"))
