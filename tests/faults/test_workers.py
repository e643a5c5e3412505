"""Two station workers on PostgreSQL and a private Mosquitto (docs/scaling.md), as real processes:
a QoS 1 stream is stored exactly once, events cross workers, and a worker killed with SIGKILL
mid-stream loses nothing while its singleton jobs and its MQTT session move to the survivor."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DB
from tests.faults.workers import PASSWORD, Cluster, EventStream, Publisher, Worker, cluster_env
from tests.helpers import start_mosquitto, wait_for
from waystation.cloud.fake import FakeCloud

pytestmark = [
    pytest.mark.skipif(
        TEST_DB != "postgresql", reason="several workers need PostgreSQL (SQLite: one process)"
    ),
    pytest.mark.timeout(240),
]

DEVICE = "fault-1"
CHANNEL = f"device:{DEVICE}/temperature"


@pytest.fixture
async def two_workers(tmp_path: Path, database_url: str) -> AsyncIterator[Cluster]:
    broker = start_mosquitto(tmp_path / "mosquitto")
    cluster = Cluster(cluster_env(tmp_path / "data", database_url, broker.port), tmp_path, database_url)
    try:
        cluster.cli("user", "create", "owner", "--role", "owner", "--password-stdin", stdin=PASSWORD.encode())
        first = cluster.spawn("a")
        await cluster.ready(first)  # the first one creates the station; the second finds it
        second = cluster.spawn("b")
        await cluster.ready(second)
        await cluster.login(first)
        yield cluster
    finally:
        cluster.stop()
        broker.stop()


async def create_device(cluster: Cluster) -> str:
    async with httpx.AsyncClient(base_url=cluster.workers[0].url, timeout=10) as client:
        r = await client.post(
            "/api/v1/devices", headers=cluster.headers(), json={"id": DEVICE, "type": "climate"}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["station_id"])


async def test_two_workers_store_a_qos1_stream_once_and_share_events(two_workers: Cluster) -> None:
    a, b = two_workers.workers
    statuses = [await two_workers.status(a), await two_workers.status(b)]
    assert {s["worker"] for s in statuses} == {"w0", "w1"}
    assert statuses[0]["leader"] == statuses[1]["leader"] in {"w0", "w1"}

    async with EventStream(b, two_workers.token, "device.*").open() as on_b:
        station_id = await create_device(two_workers)  # on worker A
        # Produced by A's API call, seen by an SSE client of B (bridged over LISTEN/NOTIFY).
        await wait_for(lambda: on_b.of("device.created"), timeout=10, message="device.created on B")

        publisher = Publisher(
            two_workers.env_port, f"station/{station_id}/device/{DEVICE}/state", 2000, rate=2000
        )
        publisher.start()
        await publisher.wait()

        async def all_stored() -> bool:
            rows, _ = await two_workers.stored(CHANNEL)
            return rows >= 2000

        with contextlib.suppress(AssertionError):  # the assertion below tells which are missing
            await wait_for(all_stored, timeout=30, interval=0.2, message="every message stored")
        assert await two_workers.stored(CHANNEL) == (2000, 2000), await two_workers.missing(CHANNEL, 2000)
        # The device went online once, announced by exactly one of the two workers that saw it.
        await wait_for(lambda: on_b.of("device.online"), timeout=10, message="device.online on B")
        assert len(on_b.of("device.online")) == 1
    # Both workers took part in the ingest (the broker spread the shared subscription).
    for worker in (a, b):
        text = worker.log.read_text()
        assert "MQTT connected" in text
    ingest = [await _ingested(w) for w in (a, b)]
    assert all(n > 0 for n in ingest), ingest


async def _ingested(worker: Worker) -> float:
    async with httpx.AsyncClient(base_url=worker.url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("waystation_ingest_messages_total "):
            return float(line.split()[1])
    return 0.0


async def test_a_killed_worker_loses_nothing_and_its_jobs_move(two_workers: Cluster) -> None:
    station_id = await create_device(two_workers)
    a, b = two_workers.workers
    leader_name = (await two_workers.status(a))["leader"]
    by_name = {(await two_workers.status(w))["worker"]: w for w in (a, b)}
    leader, survivor = by_name[leader_name], next(w for n, w in by_name.items() if n != leader_name)

    count = 3000
    publisher = Publisher(
        two_workers.env_port, f"station/{station_id}/device/{DEVICE}/state", count, rate=1000
    )
    publisher.start()
    await wait_for(lambda: publisher.sent >= count // 3, timeout=20, message="a third of the stream")
    leader.kill()  # mid-stream, holding unacknowledged messages and the leadership

    async def took_over() -> bool:
        status = await two_workers.status(survivor)
        return bool(status["is_leader"]) and status["workers"] == [status["worker"]]

    await wait_for(took_over, timeout=10, interval=0.2, message="the survivor leads")
    await publisher.wait()

    async def all_stored() -> bool:
        rows, _ = await two_workers.stored(CHANNEL)
        return rows >= count

    with contextlib.suppress(AssertionError):  # the assertion below tells how many are missing
        await wait_for(all_stored, timeout=30, interval=0.5, message="every message stored")
    async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as client:
        metrics = [
            line
            for line in (await client.get("/metrics")).text.splitlines()
            if line.startswith(("waystation_ingest", "waystation_mqtt", "waystation_device_messages"))
        ]
    missing = await two_workers.missing(CHANNEL, count)
    assert await two_workers.stored(CHANNEL) == (count, count), (missing, "\n".join(metrics))
    status = await two_workers.status(survivor)
    assert status["leader"] == status["worker"]
    assert "rules" in status["jobs"] and "mqtt-adopt" in status["jobs"]

    # The dead worker's MQTT session (its unacknowledged and queued messages) was adopted and ended.
    async def adopted() -> list[str]:
        return [s["worker"] for s in (await two_workers.status(survivor))["adopted_sessions"]]

    assert await wait_for(adopted, timeout=15, interval=0.2, message="adoption") == [leader_name]


@pytest.mark.slow(15)
async def test_a_claim_answered_by_a_follower_reaches_the_link_on_the_leader(
    tmp_path: Path, database_url: str
) -> None:
    """The cloud link runs on the leader only; claim, unclaim and status work through any worker. BLE
    provisioning is not passed on: a follower names the problem."""
    broker = start_mosquitto(tmp_path / "mosquitto")
    async with FakeCloud() as fake:
        env = cluster_env(tmp_path / "data", database_url, broker.port)
        env.update(
            {
                "WAYSTATION_CLOUD_URL": fake.url,
                "WAYSTATION_CLOUD_BACKOFF_INITIAL_SECONDS": "0.1",
                "WAYSTATION_BLE_SIMULATE": "true",
            }
        )
        cluster = Cluster(env, tmp_path, database_url)
        try:
            cluster.cli(
                "user", "create", "owner", "--role", "owner", "--password-stdin", stdin=PASSWORD.encode()
            )
            for name in ("a", "b"):
                worker = cluster.spawn(name)
                await cluster.ready(worker)
            await cluster.login(cluster.workers[0])

            async def roles() -> tuple[Worker, Worker] | None:
                statuses = [await cluster.status(w) for w in cluster.workers]
                leader = statuses[0]["leader"]
                if leader is None or any(s["leader"] != leader for s in statuses):
                    return None
                by_name = {s["worker"]: w for s, w in zip(statuses, cluster.workers, strict=True)}
                return by_name[leader], next(w for w in cluster.workers if w is not by_name[leader])

            leader, follower = await wait_for(roles, timeout=20, message="an agreed leader")
            # BLE provisioning is not passed on: the follower says where it runs.
            async with httpx.AsyncClient(timeout=10, headers=cluster.headers()) as client:
                r = await client.get(f"{follower.url}/api/v1/provisioning/status")
                assert r.status_code == 503 and r.json()["code"] == "BLE_PROVISIONING_ON_LEADER", r.text
                r = await client.get(f"{leader.url}/api/v1/provisioning/status")
                assert r.status_code == 200, r.text
            async with httpx.AsyncClient(
                base_url=follower.url, timeout=10, headers=cluster.headers()
            ) as client:
                r = await client.post("/api/v1/cloud/claim")
                assert r.status_code == 200, r.text
                station = await wait_for(
                    lambda: next((s for s in fake.stations.values() if s.token), None),
                    timeout=20,
                    message="the leader's link claimed at the cloud",
                )

                async def follower_sees(state: str, claimed: bool) -> bool:
                    body = (await client.get("/api/v1/cloud/status")).json()
                    return bool(body["state"] == state and body["claimed"] is claimed)

                await wait_for(
                    lambda: follower_sees("connected", True), timeout=20, message="connected, seen"
                )
                r = await client.post("/api/v1/cloud/unclaim")
                assert r.status_code == 200, r.text
                await wait_for(
                    lambda: follower_sees("disabled", False), timeout=20, message="unclaimed, seen"
                )
                assert station is not None
                await wait_for(lambda: not station.connected, timeout=20, message="the leader's link closed")
            # Both stop promptly on SIGTERM (a follower once spun on its own status requests and
            # swallowed the cancellation).
            for worker in (follower, leader):
                started = time.monotonic()
                worker.stop()
                assert time.monotonic() - started < 10, f"{worker.name} took too long to stop"
        finally:
            cluster.stop()
            broker.stop()
