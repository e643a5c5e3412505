"""Smoke tests of the embedded default: `waystation run` as a real process with its own broker child."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import free_port
from waystation.broker.embedded import port_is_free

WAYSTATION = [sys.executable, "-m", "waystation"]


def _env(tmp_path: Path, mqtt_port: int, http_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env.update(
        {
            "WAYSTATION_DATA_DIR": str(tmp_path / "data"),
            "WAYSTATION_MQTT_URL": f"embedded://127.0.0.1:{mqtt_port}",
            "WAYSTATION_HTTP_PORT": str(http_port),
            "WAYSTATION_DEMO_DEVICES": "3",
            **extra,
        }
    )
    return env


def _wait_ready(http_port: int, proc: subprocess.Popen[bytes], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"station exited early with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("station never became ready")


def _refused_on_connect(client: paho.Client) -> bool:
    """Run the client's network loop until the broker answered its CONNECT; True if it refused."""
    answer: list[bool] = []
    client.on_connect = lambda c, u, flags, reason, props: answer.append(reason.is_failure)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not answer and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return bool(answer and answer[0])


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.mark.slow(11)
@pytest.mark.parametrize("broker_kind", ["mosquitto", "amqtt"])
def test_run_demo_on_embedded_broker(tmp_path: Path, broker_kind: str) -> None:
    mqtt_port, http_port = free_port(), free_port()
    log = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(
        [*WAYSTATION, "run", "--demo"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(tmp_path, mqtt_port, http_port, WAYSTATION_EMBEDDED_BROKER=broker_kind),
    )
    try:
        _wait_ready(http_port, proc)
        output = (tmp_path / "out.log").read_text()
        password = output.split("password '", 1)[1].split("'", 1)[0]
        base = f"http://127.0.0.1:{http_port}"
        token = httpx.post(
            f"{base}/api/v1/auth/login", json={"username": "admin", "password": password}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        deadline = time.monotonic() + 30
        online: list[dict] = []
        while time.monotonic() < deadline:
            devices = httpx.get(f"{base}/api/v1/devices", headers=headers).json()["items"]
            online = [d for d in devices if d["status"] == "online" and d["state"]]
            if len(online) == 3:
                break
            time.sleep(0.5)
        assert len(online) == 3, devices

        status = httpx.get(f"{base}/api/v1/status/ingest", headers=headers).json()
        assert status["embedded_broker"]["kind"] == broker_kind
        sync = httpx.get(f"{base}/api/v1/broker/sync", headers=headers).json()
        # Both managed brokers enforce accounts (the demo devices log in with their own): Mosquitto
        # through its dynamic security plugin, amqtt through the account file the station writes.
        assert sync["mode"] == ("mosquitto-dynsec" if broker_kind == "mosquitto" else "password-file")
        anonymous = paho.Client(CallbackAPIVersion.VERSION2, client_id="anonymous")
        refused = anonymous.connect("127.0.0.1", mqtt_port) != 0 or _refused_on_connect(anonymous)
        assert refused
        # The broker listens on loopback and an MQTT client with the right account can talk to it.
        got: list[bytes] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="smoke")
        station_password = (tmp_path / "data" / "keys" / "broker-station.key").read_text().strip()
        client.username_pw_set("waystation", station_password)
        client.on_message = lambda c, u, m: got.append(m.payload)
        client.connect("127.0.0.1", mqtt_port)
        client.subscribe("station/+/device/+/state")
        client.loop_start()
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        client.loop_stop()
        client.disconnect()
        assert got and "state" in orjson.loads(got[0])
    finally:
        code = _stop(proc)
        log.close()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit too.
    assert code in (0, -signal.SIGTERM)
    logs = tmp_path / "data" / "logs"
    assert "Waystation stopped" in (logs / "app.log").read_text()
    assert (logs / "app.log").stat().st_size > 0
    assert (logs / "debug.log").stat().st_size >= (logs / "app.log").stat().st_size
    # Secrets printed once on the console never reach the log files.
    assert password not in (logs / "app.log").read_text() + (logs / "debug.log").read_text()
    # The broker child is gone with the station.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", mqtt_port)) != 0


def test_taken_broker_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        result = subprocess.run(
            [*WAYSTATION, "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(tmp_path, taken, free_port()),
        )
    assert result.returncode == 2
    assert f"MQTT port {taken}" in result.stderr and "already in use" in result.stderr
    assert "WAYSTATION_MQTT_URL=embedded://127.0.0.1:18830" in result.stderr
    assert "Traceback" not in result.stderr


def test_first_start_without_demo_prints_a_setup_link(tmp_path: Path) -> None:
    mqtt_port, http_port = free_port(), free_port()
    log = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(
        [*WAYSTATION, "run"], stdout=log, stderr=subprocess.STDOUT, env=_env(tmp_path, mqtt_port, http_port)
    )
    try:
        _wait_ready(http_port, proc)
    finally:
        _stop(proc)
        log.close()
    output = (tmp_path / "out.log").read_text()
    assert f"http://127.0.0.1:{http_port}/setup?token=wss_" in output.replace("\n", "")


@pytest.mark.slow(7)
def test_a_killed_station_does_not_leave_its_broker_behind(tmp_path: Path) -> None:
    """SIGKILL gives the station no chance to stop its Mosquitto child: the child must still go (the
    kernel's parent-death signal), so the next start finds the port free."""
    mqtt_port, http_port = free_port(), free_port()
    env = _env(tmp_path, mqtt_port, http_port)
    log = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen([*WAYSTATION, "run"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(http_port, proc)
        child = int((tmp_path / "data" / "broker" / "child.pid").read_text())
        assert Path(f"/proc/{child}").exists()
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not port_is_free("127.0.0.1", mqtt_port):
            time.sleep(0.1)
        assert port_is_free("127.0.0.1", mqtt_port), "the broker child outlived the station"
        # And the station starts again on the same data directory and port.
        again = subprocess.Popen([*WAYSTATION, "run"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(http_port, again)
        finally:
            _stop(again)  # (uvicorn re-raises SIGTERM after its graceful shutdown: exit status -15)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
