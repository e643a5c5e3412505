"""Real worker processes for the fault tests: `waystation run` children on one PostgreSQL database and
one private Mosquitto, each on its own HTTP port (as N machines with the same settings would be)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import free_port, wait_for

PASSWORD = "owner-password-1"


@dataclass
class Worker:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no acks, no DISCONNECT (a crashed process or a lost machine)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    env: dict[str, str]
    workdir: Path
    database_url: str
    workers: list[Worker] = field(default_factory=list)
    token: str = ""

    @property
    def env_port(self) -> int:
        """The broker's port."""
        return int(self.env["WAYSTATION_MQTT_URL"].rsplit(":", 1)[1])

    def cli(self, *args: str, stdin: bytes | None = None) -> None:
        subprocess.run(
            [sys.executable, "-m", "waystation", *args], env=self.env, input=stdin, check=True, timeout=60
        )

    def spawn(self, name: str) -> Worker:
        port = free_port()
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "waystation", "run"],
                env={**self.env, "WAYSTATION_HTTP_PORT": str(port)},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        worker = Worker(name, port, proc, log)
        self.workers.append(worker)
        return worker

    async def ready(self, worker: Worker, timeout: float = 60.0) -> None:
        async def answers() -> bool:
            assert worker.alive(), worker.log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"{worker.url}/readyz")).status_code == 200
            return False

        await wait_for(answers, timeout=timeout, interval=0.2, message=f"{worker.name} ready")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def login(self, worker: Worker) -> None:
        async with httpx.AsyncClient(base_url=worker.url, timeout=10) as client:
            r = await client.post("/api/v1/auth/login", json={"username": "owner", "password": PASSWORD})
            assert r.status_code == 200, r.text
            self.token = r.json()["access_token"]

    async def status(self, worker: Worker) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=worker.url, timeout=10) as client:
            r = await client.get("/api/v1/status/cluster", headers=self.headers())
            assert r.status_code == 200, r.text
            return dict(r.json())

    async def stored(self, channel: str) -> tuple[int, int]:
        """(rows, distinct timestamps) stored for a channel, read straight from the database."""
        conn = await asyncpg.connect(self.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT d.ts) AS u FROM datapoints d "
                "JOIN channels c ON c.pk = d.channel_pk WHERE c.id = $1",
                channel,
            )
        finally:
            await conn.close()
        return int(row["n"]), int(row["u"])

    async def missing(self, channel: str, count: int) -> list[int]:
        """Which of the values 0 … count-1 (the publisher's sequence numbers) are not stored."""
        conn = await asyncpg.connect(self.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch(
                "SELECT d.value FROM datapoints d JOIN channels c ON c.pk = d.channel_pk WHERE c.id = $1",
                channel,
            )
        finally:
            await conn.close()
        return sorted(set(range(count)) - {int(row["value"]) for row in rows})

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def cluster_env(data_dir: Path, database_url: str, mqtt_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env.update(
        {
            "WAYSTATION_DATA_DIR": str(data_dir),
            "WAYSTATION_DATABASE_URL": database_url,
            "WAYSTATION_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "WAYSTATION_HTTP_HOST": "127.0.0.1",
            "WAYSTATION_DEVICE_FLUSH_INTERVAL_MS": "50",
            "WAYSTATION_PRESENCE_CHECK_INTERVAL_SECONDS": "0.2",
            "WAYSTATION_CLUSTER": "on",
            "WAYSTATION_CLUSTER_LEADER_POLL_SECONDS": "0.5",
            "WAYSTATION_CLUSTER_ADOPT_AFTER_SECONDS": "1",
            "WAYSTATION_MQTT_SESSION_EXPIRY_SECONDS": "600",
            "WAYSTATION_RATE_LIMIT_ENABLED": "false",
            "COLUMNS": "300",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Publisher:
    """Publishes a QoS 1 stream of state messages with their own `ts` (so each is stored once at most),
    at a steady rate, in a thread; `wait()` returns once the broker acknowledged every one."""

    def __init__(self, port: int, topic: str, count: int, rate: float) -> None:
        self.port, self.topic, self.count, self.rate = port, topic, count, rate
        self.sent = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        # Recent stamps: the leader's retention job deletes readings older than the raw retention.
        self.base = datetime.now(UTC) - timedelta(minutes=10)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{free_port()}", protocol=paho.MQTTv5
        )
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        started = time.monotonic()
        infos = []
        for i in range(self.count):
            ts = (self.base + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z")
            payload = orjson.dumps({"state": {"temperature": float(i)}, "ts": ts})
            infos.append(client.publish(self.topic, payload, qos=1))
            self.sent = i + 1
            delay = started + (i + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for info in infos:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()
        self._done.set()

    async def wait(self, timeout: float = 60.0) -> None:
        await wait_for(self._done.is_set, timeout=timeout, message="the publisher's acknowledgements")


class EventStream:
    """An SSE client that records (type, data) of every event it reads."""

    def __init__(self, worker: Worker, token: str, types: str) -> None:
        self.url = f"{worker.url}/api/v1/events/stream?types={types}"
        self.token = token
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def _read(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            headers = {"Authorization": f"Bearer {self.token}"}
            async with client.stream("GET", self.url, headers=headers) as response:
                assert response.status_code == 200
                self.connected.set()
                kind = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        kind = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and kind:
                        self.events.append((kind, orjson.loads(line.split(":", 1)[1].strip())))

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[EventStream]:
        self._task = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self.connected.wait(), 10)
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]
