"""`waystation fake-cloud` as users run it: a child process, driven through its HTTP control API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.cloud.support import FAST, cloud_status, wait_state
from tests.helpers import free_port, start_station, wait_for, wait_port


@pytest.fixture
def fake_cloud_process() -> Iterator[tuple[int, int]]:
    port, control = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waystation",
            "fake-cloud",
            "--port",
            str(port),
            "--control-port",
            str(control),
            "--require-registration",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        wait_port(control)
        yield port, control
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_fake_cloud_cli_and_control_api(settings_factory, fake_cloud_process: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    port, control = fake_cloud_process
    url = f"ws://127.0.0.1:{port}/ws/station"
    async with (
        start_station(settings_factory(cloud_url=url, **FAST)) as st,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{control}", timeout=10) as cloud,
    ):
        status = await cloud_status(st)
        chip = status["chip_id"]
        # What the owner does in the cloud app, then on the station.
        r = await cloud.post("/claims", json={"chipId": chip, "claimSecret": status["claim_secret"]})
        assert r.status_code == 201
        r = await st.client.post("/api/v1/cloud/claim", headers=await st.owner_headers())
        assert r.status_code == 200
        await wait_state(st, "connected")

        await st.create_device("lamp-9", "light")
        r = await cloud.post(f"/stations/{chip}/rpc", json={"method": "devices.snapshot"})
        assert [d["id"] for d in r.json()["result"]["devices"]] == ["lamp-9"]
        r = await cloud.post(
            f"/stations/{chip}/rpc",
            json={
                "method": "station.setActiveChannels",
                "params": {"channels": ["device.commandSent", "device.offline"]},
            },
        )
        assert r.json() == {"result": {"ok": True}}
        r = await cloud.post(f"/stations/{chip}/rpc", json={"method": "nope"})
        assert r.json()["error"]["code"] == -32601

        r = await cloud.post(
            f"/stations/{chip}/message", json={"type": "station_renamed", "name": "Via HTTP"}
        )
        assert r.status_code == 202

        async def renamed() -> bool:
            r = await st.client.get("/api/v1/station", headers=await st.owner_headers())
            return bool(r.json()["name"] == "Via HTTP")

        await wait_for(renamed, message="rename")

        r = await cloud.post(f"/stations/{chip}/pings", json={"answer": False})
        assert r.json() == {"ok": True}
        r = await cloud.get("/stations")
        assert r.json()["items"][0]["answerPings"] is False
        r = await cloud.get(f"/stations/{chip}/notifications")
        assert r.json() == {"items": []}
