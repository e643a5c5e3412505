"""The SQLite database's disk fills up in the middle of a QoS 1 stream: the station says so in its log,
writes answer 507 `STORAGE_FULL` while reads keep working, the file is not corrupted, and once space is
freed ingest resumes and every message the broker acknowledged is stored exactly once.

The database lives on a small tmpfs mounted for the test (we are root in the test environment); the
test skips where mounting is not permitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_DB
from tests.faults.test_db_restart import _stored
from tests.helpers import StationHandle, start_mosquitto, start_station, wait_for
from tests.telemetry.test_reliability import Publisher
from waystation.config import Settings

pytestmark = [
    pytest.mark.skipif(
        TEST_DB == "postgresql", reason="disk full is tested on SQLite, whose file lives in the data dir"
    ),
    pytest.mark.timeout(120),
]

TMPFS_SIZE = "8m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path: Path) -> int:
    """Write zeros to `path` until the disk refuses; returns the bytes written."""
    written = 0
    chunk = b"\0" * 16384
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return written


@pytest.fixture
async def station_on_small_disk(
    small_disk: Path, database_url: str, tmp_path: Path
) -> AsyncIterator[StationHandle]:
    # The migrated copy the conftest made for this test, moved onto the small disk.
    db_file = small_disk / "waystation.db"
    shutil.copy(database_url.split("///", 1)[1], db_file)
    broker = start_mosquitto(tmp_path / "broker")  # its own broker: no sessions left by other tests
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite+aiosqlite:///{db_file}",
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        http_host="127.0.0.1",
        http_port=0,
        mqtt_session_expiry_seconds=300,
        ingest_max_queue_rows=200,  # small, so a failing disk fills the queue and ingest pauses
    )
    try:
        async with start_station(settings) as station:
            yield station
    finally:
        broker.stop()


async def test_full_disk_refuses_writes_keeps_reads_and_recovers_without_loss(
    station_on_small_disk: StationHandle, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    station = station_on_small_disk
    owner = await station.owner_headers()
    await station.create_device("disk-1", "sensor")
    count = 1500
    pub = Publisher(station.mqtt_port, station.station_id, "disk-1", count, rate=500)
    filler = small_disk / "filler"
    caplog.set_level(logging.WARNING, logger="waystation.telemetry.ingest")
    pub.start()
    try:
        await wait_for(lambda: pub.published >= count // 3, timeout=20, message="a third published")
        assert fill(filler) > 0
        ingest, link = station.ctx.ingest, station.ctx.mqtt
        assert ingest is not None and link is not None
        await wait_for(lambda: link.paused, timeout=20, message="ingest back-pressure on a full disk")

        # The log names the cause.
        assert any("STORAGE_FULL" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
        # A write is refused with a stable code, never a 500 with internals.
        r = await station.client.post(
            "/api/v1/devices", headers=owner, json={"id": "disk-2", "type": "sensor"}
        )
        assert r.status_code == 507, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "STORAGE_FULL"
        assert "sqlite" not in r.text.lower() and "Traceback" not in r.text
        # Reads still work.
        r = await station.client.get("/api/v1/devices/disk-1", headers=owner)
        assert r.status_code == 200, r.text

        filler.unlink()  # space returns
        await asyncio.to_thread(pub.stop)
        assert len(pub.acked) == count

        async def all_stored() -> bool:
            return (await _stored(station.ctx.db, "device:disk-1/a"))[0] >= count

        await wait_for(all_stored, timeout=60, interval=0.2, message=f"all {count} messages stored")
        assert await _stored(station.ctx.db, "device:disk-1/a") == (count, count)
        assert await _stored(station.ctx.db, "device:disk-1/b") == (count, count)
        await wait_for(lambda: not link.paused, timeout=10, message="ingest resumed")
        r = await station.client.post(
            "/api/v1/devices", headers=owner, json={"id": "disk-2", "type": "sensor"}
        )
        assert r.status_code == 201, r.text
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        if pub.thread.is_alive() or pub.client.is_connected():
            await asyncio.to_thread(pub.stop)

    with sqlite3.connect(small_disk / "waystation.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
