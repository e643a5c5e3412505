"""PostgreSQL stopped in the middle of a QoS 1 stream: the API answers 503 `DATABASE_UNAVAILABLE`
(problem+json, `Retry-After`), `/readyz` says not ready, ingest pauses and retries, and once the server
is back every message is stored exactly once.

The test runs its own PostgreSQL server (initdb + pg_ctl on a free port in a private directory), so
stopping it never disturbs the shared server the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select

from tests.conftest import TEST_DB
from tests.helpers import StationHandle, free_port, start_mosquitto, start_station, wait_for
from tests.telemetry.test_reliability import Publisher
from waystation.config import Settings
from waystation.db import Database, migrate
from waystation.telemetry.models import Channel, Datapoint

PG_BIN = Path(os.environ.get("WAYSTATION_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))

pytestmark = [
    pytest.mark.skipif(
        TEST_DB != "postgresql",
        reason="a PostgreSQL restart needs WAYSTATION_TEST_DB=postgresql (SQLite has no server to stop)",
    ),
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason=f"no initdb in {PG_BIN}"),
    pytest.mark.timeout(180),
]


class PrivatePostgres:
    """A throw-away PostgreSQL server on a free loopback port, run as the `postgres` user when we are
    root (initdb refuses root). Its directory lives outside pytest's root-only tmp tree for that user."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ws-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/waystation"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-o", options,
                  "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, str(PG_BIN / "pg_ctl"), "-D", f"{self.dir}/data", "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture
async def station_on_private_pg(private_pg: PrivatePostgres, tmp_path: Path) -> AsyncIterator[StationHandle]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{private_pg.port}/postgres")
    try:
        await conn.execute("CREATE DATABASE waystation")
    finally:
        await conn.close()
    broker = start_mosquitto(tmp_path / "broker")  # its own broker: no sessions left by other tests
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=private_pg.url,
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        http_host="127.0.0.1",
        http_port=0,
        mqtt_session_expiry_seconds=300,
        ingest_max_queue_rows=200,  # small, so the outage fills the queue and ingest pauses
    )
    await migrate(settings)
    try:
        async with start_station(settings) as station:
            yield station
    finally:
        broker.stop()


async def _stored(db: Database, channel_id: str) -> tuple[int, int]:
    async with db.session() as session:
        pk = await session.scalar(select(Channel.pk).where(Channel.id == channel_id))
        if pk is None:
            return 0, 0
        total = await session.scalar(select(func.count()).where(Datapoint.channel_pk == pk))
        distinct = await session.scalar(
            select(func.count(func.distinct(Datapoint.ts))).where(Datapoint.channel_pk == pk)
        )
        return int(total or 0), int(distinct or 0)


async def test_postgres_stopped_mid_stream_answers_503_then_stores_every_message_once(
    station_on_private_pg: StationHandle, private_pg: PrivatePostgres
) -> None:
    station = station_on_private_pg
    owner = await station.owner_headers()
    await station.create_device("pg-1", "sensor")
    count = 1500
    pub = Publisher(station.mqtt_port, station.station_id, "pg-1", count, rate=500)
    pub.start()
    try:
        await wait_for(lambda: pub.published >= count // 3, timeout=20, message="a third published")
        await asyncio.to_thread(private_pg.stop)

        # While the database is down: a stable 503, never a 500 with internals.
        r = await station.client.get("/api/v1/devices", headers=owner)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "DATABASE_UNAVAILABLE"
        assert int(r.headers["Retry-After"]) >= 1
        assert "asyncpg" not in r.text and "Traceback" not in r.text and "SELECT" not in r.text
        r = await station.client.post("/api/v1/devices", headers=owner, json={"type": "sensor"})
        assert (r.status_code, r.json()["code"]) == (503, "DATABASE_UNAVAILABLE")
        r = await station.client.get("/readyz")
        assert r.status_code == 503 and r.json()["database"] == "unreachable"

        # Ingest keeps failing its write and holds the stream back instead of dropping it.
        ingest, link = station.ctx.ingest, station.ctx.mqtt
        assert ingest is not None and link is not None
        await wait_for(lambda: ingest.write_failures >= 1, timeout=10, message="a failed batch write")
        await wait_for(lambda: link.paused, timeout=10, message="ingest back-pressure")

        await asyncio.sleep(1.0)  # the outage lasts a while longer while the stream goes on
        await asyncio.to_thread(private_pg.start)
        await asyncio.to_thread(pub.stop)
        assert len(pub.acked) == count

        async def all_stored() -> bool:
            return (await _stored(station.ctx.db, "device:pg-1/a"))[0] >= count

        await wait_for(all_stored, timeout=60, interval=0.2, message=f"all {count} messages stored")
        assert await _stored(station.ctx.db, "device:pg-1/a") == (count, count)
        assert await _stored(station.ctx.db, "device:pg-1/b") == (count, count)
        await wait_for(lambda: not link.paused, timeout=10, message="ingest resumed")

        async def ready() -> bool:
            return (await station.client.get("/readyz")).status_code == 200

        await wait_for(ready, timeout=10, message="ready again")
        r = await station.client.get("/api/v1/devices/pg-1", headers=owner)
        assert r.status_code == 200, r.text
    finally:
        if pub.thread.is_alive() or pub.client.is_connected():
            await asyncio.to_thread(pub.stop)
