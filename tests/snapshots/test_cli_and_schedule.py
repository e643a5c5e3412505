"""`waystation snapshot export|import --passphrase-stdin` against the configured database, and the
scheduled job: it writes into the data directory, prunes beyond `snapshot_keep`, and says why it is off."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import StationHandle, start_station, wait_for
from tests.snapshots.support import PASSPHRASE, tables
from waystation.config import Settings
from waystation.db import Database
from waystation.secrets_box import SecretBox
from waystation.snapshots import store
from waystation.snapshots.schedule import SnapshotScheduler

pytestmark = pytest.mark.timeout(240)


async def cli(settings: Settings, *args: str, stdin: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "WAYSTATION_DATA_DIR": str(settings.data_dir),
        "WAYSTATION_DATABASE_URL": settings.resolved_database_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waystation",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.slow(14)
async def test_cli_export_then_import_into_a_fresh_database(
    station: StationHandle, target_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    await station.create_device("climate-1")
    path = tmp_path / "cli.age"
    code, out = await cli(
        station.settings, "snapshot", "export", str(path), "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    assert code == 0, out
    assert path.read_bytes().startswith(b"age-encryption.org/v1\n")
    source = await tables(station.settings)

    target = target_settings()
    code, out = await cli(
        target, "snapshot", "import", str(path), "--passphrase-stdin", stdin="wrong passphrase\n"
    )
    assert code == 2 and "passphrase does not open" in out
    code, out = await cli(
        target, "snapshot", "import", str(path), "--dry-run", "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    assert code == 0 and "dry run" in out, out
    assert (await tables(target))["devices"] == []
    code, out = await cli(
        target, "snapshot", "import", str(path), "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    assert code == 0, out
    imported = await tables(target)
    assert imported["devices"] == source["devices"]
    assert imported["device_credentials"] == source["device_credentials"]
    assert imported["stations"] == source["stations"]


@pytest.mark.slow(12)
async def test_scheduled_snapshots_are_written_and_pruned(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    secret_file = tmp_path / "passphrase"
    secret_file.write_text(PASSPHRASE + "\n")
    settings = settings_factory(
        snapshot_passphrase_file=secret_file, snapshot_keep=2, snapshot_interval_hours=24
    )
    async with start_station(settings) as station:
        # At start-up with no snapshot yet, the job writes one at once.
        await wait_for(lambda: store.list_files(settings), timeout=30, message="first scheduled snapshot")
        r = await station.client.get("/api/v1/snapshots", headers=await station.owner_headers())
        assert r.status_code == 200, r.text
        listing = r.json()
        assert listing["schedule"]["enabled"] is True and listing["schedule"]["keep"] == 2
        name = listing["items"][0]["name"]
        r = await station.client.get(f"/api/v1/snapshots/{name}", headers=await station.owner_headers())
        assert r.status_code == 200 and r.content.startswith(b"age-encryption.org/v1\n")
        r = await station.client.get(
            "/api/v1/snapshots/..%2Fwaystation.db", headers=await station.owner_headers()
        )
        assert r.status_code == 404

    db = Database(settings)
    try:
        job = SnapshotScheduler(settings, db, SecretBox(settings.data_dir))
        for _ in range(2):
            await job.run_once()
    finally:
        await db.dispose()
    names = [f.name for f in store.list_files(settings)]
    assert len(names) == 2 and job.last_file in names  # three written, the oldest pruned
    assert name not in names


async def test_without_a_passphrase_file_the_schedule_is_off_and_says_why(station: StationHandle) -> None:
    r = await station.client.get("/api/v1/snapshots", headers=await station.owner_headers())
    schedule = r.json()["schedule"]
    assert schedule["enabled"] is False
    assert "WAYSTATION_SNAPSHOT_PASSPHRASE_FILE" in schedule["reason"]
    assert r.json()["items"] == []
