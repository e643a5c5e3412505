"""Nothing acknowledged is lost: kill -9 of the station, and a broker restart, in the middle of a stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from tests.helpers import free_port, start_mosquitto, start_station, wait_for
from waystation.config import Settings
from waystation.db import Database
from waystation.devices.types import seed_device_types
from waystation.simulator.fleet import FleetMember, register_fleet
from waystation.station.service import ensure_default_station
from waystation.telemetry.models import Channel, Datapoint


class Publisher:
    """A device publishing a QoS 1 stream of state messages, each with its own `ts`, from a thread."""

    def __init__(self, port: int, station_id: str, device_id: str, count: int, rate: float) -> None:
        self.topic = f"station/{station_id}/device/{device_id}/state"
        self.count, self.rate = count, rate
        # No lock of our own: paho calls on_publish holding its internal lock, and taking ours there
        # while the publishing thread holds ours and waits for paho's would deadlock.
        self._acked_mids: set[int] = set()
        self._sent: list[tuple[int, int]] = []  # (mid, message number); mids stay unique below 65,536
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{device_id}", clean_session=False
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.published = 0

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        self._acked_mids.add(mid)

    @property
    def acked(self) -> set[int]:
        """Message numbers the broker acknowledged."""
        acked = set(self._acked_mids)
        return {n for mid, n in list(self._sent) if mid in acked}

    def _run(self) -> None:
        for n in range(self.count):
            payload = orjson.dumps({"state": {"a": n, "b": n * 0.5}, "ts": 1_795_000_000_000 + n})
            info = self.client.publish(self.topic, payload, qos=1)
            self._sent.append((info.mid, n))
            self.published = n + 1
            time.sleep(1.0 / self.rate)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.join(60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(self._acked_mids) < self.count:
            time.sleep(0.1)
        self.client.loop_stop()
        self.client.disconnect()


async def _stored(db: Database, channel_id: str) -> tuple[int, int]:
    async with db.session() as session:
        pk = await session.scalar(select(Channel.pk).where(Channel.id == channel_id))
        if pk is None:
            return 0, 0
        total = await session.scalar(
            select(func.count()).select_from(Datapoint).where(Datapoint.channel_pk == pk)
        )
        distinct = await session.scalar(
            select(func.count(func.distinct(Datapoint.ts))).where(Datapoint.channel_pk == pk)
        )
        return int(total or 0), int(distinct or 0)


def _station_process(
    tmp_path: Path, database_url: str, mqtt_port: int, http_port: int
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env.update(
        {
            "WAYSTATION_DATA_DIR": str(tmp_path / "data"),
            "WAYSTATION_DATABASE_URL": database_url,
            "WAYSTATION_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "WAYSTATION_HTTP_PORT": str(http_port),
            "WAYSTATION_MQTT_SESSION_EXPIRY_SECONDS": "300",
        }
    )
    log = (tmp_path / "station.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "waystation", "run"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "station.log").read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("station did not become ready")


async def _broker_and_one_sensor(
    tmp_path: Path, database_url: str, device_id: str
) -> tuple[Any, Database, str]:
    """A private Mosquitto (no sessions left by other tests) and a database with one registered sensor."""
    mosquitto = start_mosquitto(tmp_path / "broker")
    db = Database(Settings(data_dir=tmp_path / "data", database_url=database_url))
    async with db.session() as session:
        station_id = (await ensure_default_station(session)).id
    async with db.session() as session:
        await seed_device_types(session)
    await register_fleet(db, station_id, [FleetMember(device_id, "sensor", device_id)])
    return mosquitto, db, station_id


@pytest.mark.slow(14)
async def test_kill_9_mid_stream_then_restart_stores_every_message_exactly_once(
    tmp_path: Path, database_url: str
) -> None:
    mosquitto, db, station_id = await _broker_and_one_sensor(tmp_path, database_url, "k9-1")
    http_port = free_port()
    count = 3000
    proc = _station_process(tmp_path, database_url, mosquitto.port, http_port)
    pub = Publisher(mosquitto.port, station_id, "k9-1", count, rate=1500)
    try:
        pub.start()
        await wait_for(lambda: pub.published >= count // 3, timeout=20, message="a third published")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await asyncio.sleep(0.5)  # the stream goes on while the station is dead; the broker holds it
        # A fresh port: the old one is in the ephemeral range, and another test's outbound connection
        # may take it as its local port the moment the killed station lets go of it.
        proc = _station_process(tmp_path, database_url, mosquitto.port, free_port())
        await asyncio.to_thread(pub.stop)
        assert len(pub.acked) == count
        await wait_for(lambda: _stored(db, "device:k9-1/a"), timeout=5, message="rows")

        async def complete() -> bool:
            return (await _stored(db, "device:k9-1/a"))[0] >= count

        try:
            await wait_for(complete, timeout=60, message=f"all {count} messages stored")
        except AssertionError:
            print("stored", await _stored(db, "device:k9-1/a"), "acked", len(pub.acked))
            print((tmp_path / "station.log").read_text()[-3000:])
            raise
        total, distinct = await _stored(db, "device:k9-1/a")
        assert total == distinct == count
        total_b, _ = await _stored(db, "device:k9-1/b")
        assert total_b == count
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await db.dispose()
        mosquitto.stop()


@pytest.mark.slow(16)
async def test_sigterm_mid_stream_stops_promptly_and_loses_nothing(tmp_path: Path, database_url: str) -> None:
    """A graceful stop under a steady stream: the station commits what it holds and exits within seconds
    (it stops taking new messages instead of chasing the stream); the broker keeps the rest for it."""
    mosquitto, db, station_id = await _broker_and_one_sensor(tmp_path, database_url, "term-1")
    count = 6000
    proc = _station_process(tmp_path, database_url, mosquitto.port, free_port())
    pub = Publisher(mosquitto.port, station_id, "term-1", count, rate=1000)
    try:
        pub.start()
        await wait_for(lambda: pub.published >= count // 4, timeout=20, message="a quarter published")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        stopped_in = time.monotonic() - started
        published_when_stopped = pub.published
        log = (tmp_path / "station.log").read_text()
        # uvicorn shuts down cleanly, then re-raises the signal it caught (exit by SIGTERM, as systemd expects)
        assert code in (0, -signal.SIGTERM), log[-2000:]
        assert "Waystation stopped" in log, log[-2000:]
        assert stopped_in < 12, f"graceful stop took {stopped_in:.1f}s under a 1,000 msg/s stream"
        assert published_when_stopped < count  # the stream was still going when the station had stopped
        proc = _station_process(tmp_path, database_url, mosquitto.port, free_port())
        await asyncio.to_thread(pub.stop)
        assert len(pub.acked) == count

        async def complete() -> bool:
            return (await _stored(db, "device:term-1/a"))[0] >= count

        await wait_for(complete, timeout=60, message=f"all {count} messages stored")
        total, distinct = await _stored(db, "device:term-1/a")
        assert total == distinct == count
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await db.dispose()
        mosquitto.stop()


async def test_broker_restart_mid_stream_loses_nothing_acknowledged(settings_factory, tmp_path: Path) -> None:
    broker = start_mosquitto(tmp_path / "broker")
    settings = settings_factory(mqtt_url=f"mqtt://127.0.0.1:{broker.port}")
    count = 2000
    try:
        async with start_station(settings) as station:
            await station.create_device("br-1", "sensor")
            pub = Publisher(broker.port, station.station_id, "br-1", count, rate=1000)
            pub.start()
            await wait_for(lambda: pub.published >= count // 3, timeout=20, message="a third published")
            await asyncio.to_thread(broker.restart)
            await asyncio.to_thread(pub.stop)
            acked = set(pub.acked)
            assert len(acked) >= count // 3

            async def all_acked_stored() -> bool:
                return (await _stored(station.ctx.db, "device:br-1/a"))[0] >= len(acked)

            try:
                await wait_for(all_acked_stored, timeout=30, message="every acknowledged message stored")
            except AssertionError:
                headers = await station.owner_headers()
                r = await station.client.get(
                    "/api/v1/datapoints",
                    headers=headers,
                    params={
                        "channel": "device:br-1/a",
                        "from": "2026-11-01T00:00:00Z",
                        "to": "2027-01-01T00:00:00Z",
                        "limit": 10000,
                    },
                )
                stored = sorted({int(p["value"]) for p in r.json()["items"]})
                missing = sorted(acked - set(stored))
                print(
                    "DEBUG acked",
                    len(acked),
                    "stored",
                    len(stored),
                    "missing",
                    len(missing),
                    missing[:5],
                    missing[-5:],
                    "published",
                    pub.published,
                    "ingest",
                    station.ctx.ingest.committed_rows,
                    station.ctx.ingest.duplicate_rows,
                    "received",
                    station.ctx.mqtt.received,
                    "inbox",
                    station.ctx.mqtt.inbox_depth,
                    "paused",
                    station.ctx.mqtt.paused,
                    "queue",
                    station.ctx.ingest.queue_rows,
                    "rejected",
                    station.app.state.metrics.rejected,
                )
                raise
            headers = await station.owner_headers()
            r = await station.client.get(
                "/api/v1/datapoints",
                headers=headers,
                params={
                    "channel": "device:br-1/a",
                    "from": "2026-11-01T00:00:00Z",
                    "to": "2027-01-01T00:00:00Z",
                    "limit": 10000,
                },
            )
            stored = {int(p["value"]) for p in r.json()["items"]}
            assert acked <= stored, f"lost: {sorted(acked - stored)[:20]}"
    finally:
        broker.stop()
