"""The controller as the issue asks for it: a separate `waystation controller` process streaming to a
station that is killed and restarted (same port, same database) keeps every reading, exactly once; and a
controller cut off from the station buffers on disk within its bounds and replays what it kept."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.controller.helpers import controller_settings, count_rows, create_controller, running_controller
from tests.helpers import Broker, StationHandle, free_port, wait_for
from waystation.controller.buffer import DiskBuffer

WAYSTATION = str(Path(sys.executable).with_name("waystation"))

CHANNELS = [
    {"id": "t", "waveform": "sine", "period": 5, "amplitude": 2, "offset": 20},
    {"id": "w", "waveform": "random_walk", "min": 0, "max": 100, "start": 50},
    {"id": "c", "waveform": "constant", "value": 7},
]


class StationProcess:
    """`waystation run` as its own process, restartable on the same port with the same database."""

    def __init__(self, workdir: Path, database_url: str, mqtt_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agent_token = secrets.token_urlsafe(24)
        self.workdir = workdir
        self.env = {
            **os.environ,
            "WAYSTATION_DATA_DIR": str(workdir / "data"),
            "WAYSTATION_DATABASE_URL": database_url,
            "WAYSTATION_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "WAYSTATION_MQTT_CLIENT_ID": f"ws-ctl-test-{self.port}",
            "WAYSTATION_MQTT_SESSION_EXPIRY_SECONDS": "30",
            "WAYSTATION_HTTP_PORT": str(self.port),
            "WAYSTATION_AGENT_TOKEN": self.agent_token,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"station-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([WAYSTATION, "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.workdir / f"station-{self.starts}.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the station did not become ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no clean shutdown: the hard case
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}


@pytest.fixture
def station_process(tmp_path: Path, database_url: str, mosquitto: Broker) -> Iterator[StationProcess]:
    proc = StationProcess(tmp_path, database_url, mosquitto.port)
    proc.start()
    yield proc
    proc.stop()


def buffer_counts(buffer_dir: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """(readings waiting, produced per channel, other counters) read from the controller's buffer file."""
    db = sqlite3.connect(f"file:{buffer_dir / 'buffer.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        waiting = db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        produced = dict(db.execute("SELECT channel, value FROM counters WHERE name = 'produced'").fetchall())
        others = dict(
            db.execute(
                "SELECT name, SUM(value) FROM counters WHERE name != 'produced' GROUP BY name"
            ).fetchall()
        )
    finally:
        db.close()
    return waiting, produced, others


def stored(station: StationProcess, channel: str) -> int:
    total, cursor = 0, None
    while True:
        params = {
            "channel": channel,
            "from": "2000-01-01T00:00:00Z",
            "to": "2100-01-01T00:00:00Z",
            "limit": 10000,
        }
        if cursor:
            params["cursor"] = cursor
        r = httpx.get(f"{station.url}/api/v1/datapoints", headers=station.headers, params=params, timeout=10)
        if r.status_code == 404:
            return 0
        r.raise_for_status()
        total += len(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if not cursor:
            return total


def poll(predicate, timeout: float, message: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


@pytest.mark.slow(6)
def test_killing_and_restarting_the_station_loses_and_duplicates_nothing(
    station_process: StationProcess, tmp_path: Path
) -> None:
    station = station_process
    h = station.headers
    r = httpx.post(f"{station.url}/api/v1/controllers", headers=h, json={"id": "field"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = httpx.post(
        f"{station.url}/api/v1/controllers/field/plugins",
        headers=h,
        json={
            "name": "sim",
            "plugin": "simulated",
            "config": {"seed": 5, "channels": CHANNELS},
            "interval_seconds": 0.02,
        },
    )
    assert r.status_code == 201, r.text
    for c in CHANNELS:
        r = httpx.post(
            f"{station.url}/api/v1/controllers/field/mappings",
            headers=h,
            json={"instance": "sim", "plugin_channel": c["id"]},
        )
        assert r.status_code == 201, r.text

    buffer_dir = tmp_path / "buffer"
    controller_log = (tmp_path / "controller.log").open("wb")
    controller = subprocess.Popen(
        [WAYSTATION, "controller", "--url", station.url, "--token", token, "--buffer-dir", str(buffer_dir)],
        env={
            **os.environ,
            "WAYSTATION_CONTROLLER_RECONNECT_MIN_SECONDS": "0.1",
            "WAYSTATION_CONTROLLER_RECONNECT_MAX_SECONDS": "0.5",
        },
        stdout=controller_log,
        stderr=subprocess.STDOUT,
    )
    try:
        poll(lambda: stored(station, "controller:field/t") >= 20, 30, "readings before the kill")
        station.kill()
        # While the station is gone the controller keeps producing into its disk buffer.
        poll(lambda: buffer_counts(buffer_dir)[0] >= 3 * 40, 30, "readings buffered during the outage")
        station.start()
        # Back on the same port and database: the backlog drains, then the buffer stays near empty.
        poll(lambda: buffer_counts(buffer_dir)[0] < 30, 60, "the backlog replayed")
        poll(lambda: stored(station, "controller:field/t") >= 150, 30, "more readings after the restart")
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(60) == 0
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
        controller_log.close()
    log = (tmp_path / "controller.log").read_text()
    assert "station unreachable" in log and "connected to ws://" in log, log[-3000:]

    waiting, produced, others = buffer_counts(buffer_dir)
    assert waiting == 0, f"{waiting} readings were not sent before the controller stopped"
    assert others.get("dropped", 0) == 0 and others.get("rejected", 0) == 0
    assert set(produced) == {f"controller:field/{c['id']}" for c in CHANNELS}
    for channel, count in produced.items():
        assert stored(station, channel) == count, channel  # every reading, once
    assert others["acked"] == sum(produced.values())


async def test_a_cut_off_controller_buffers_within_bounds_and_replays_after_a_restart(
    station: StationHandle, tmp_path: Path
) -> None:
    token = await create_controller(station, "cut", interval=0.01, channels=CHANNELS[:1])
    r = await station.client.get(
        "/api/v1/controllers/me/config", headers={"Authorization": f"Bearer {token}"}
    )
    buffer_dir = tmp_path / "buffer"
    buffer_dir.mkdir()
    # The configuration a controller caches from its last contact with the station.
    (buffer_dir / "config.json").write_text(json.dumps(r.json()))

    dead = f"http://127.0.0.1:{free_port()}"
    offline = controller_settings(dead, token, buffer_dir, buffer_max_rows=100)
    async with running_controller(offline, wait_state="offline") as controller:
        await wait_for(lambda: controller.buffer.total("dropped") >= 50, timeout=20, message="a full buffer")
        assert controller.buffer.rows == 100
        produced_offline = controller.buffer.total("produced")
    # Stopped: 100 readings, the newest, wait on disk. (Read after the stop: until then the controller
    # keeps producing and dropping the oldest.)
    stopped = DiskBuffer(buffer_dir, max_rows=10_000, max_bytes=10**8)
    assert stopped.rows == 100
    oldest_kept = stopped.peek(1)[0].ts_us
    stopped.close()

    # Restarted with room to spare and the station reachable: what was kept goes out, oldest first.
    online = controller_settings(station.base_url, token, buffer_dir, buffer_max_rows=10_000)
    async with running_controller(online) as controller:
        assert controller.buffer.total("produced") >= produced_offline
        await wait_for(lambda: controller.link.sent >= 100, timeout=20, message="the kept readings replayed")
    after = DiskBuffer(buffer_dir, max_rows=10_000, max_bytes=10**8)
    produced = after.counters("produced")["controller:cut/t"]
    dropped = after.counters("dropped")["controller:cut/t"]
    assert after.rows == 0 and after.total("acked") == produced - dropped
    after.close()
    assert await count_rows(station, "controller:cut/t") == produced - dropped
    # The oldest reading kept is the first one stored: what went was the oldest.
    r = await station.client.get(
        "/api/v1/datapoints",
        headers=await station.owner_headers(),
        params={
            "channel": "controller:cut/t",
            "from": "2000-01-01T00:00:00Z",
            "to": "2100-01-01T00:00:00Z",
            "limit": 1,
        },
    )
    first = datetime.fromisoformat(r.json()["items"][0]["ts"])
    assert round(first.timestamp() * 1_000_000) == oldest_kept
