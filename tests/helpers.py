"""Test helpers: real brokers, a real station over HTTP, and a device that speaks MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
import orjson
import uvicorn

from waystation.app import AppOptions, create_app
from waystation.broker.embedded import find_mosquitto, run_as_user
from waystation.config import Settings
from waystation.context import AppContext

T = TypeVar("T")


# Listening ports come from below the kernel's ephemeral range (32768+ here): a port from that range
# can be taken as the local end of any outbound connection (a database, a broker client) the moment a
# test lets go of it, and a station restarted on it would then fail to bind.
_LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    for _ in range(200):
        port = random.choice(_LISTEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Broker:
    """A real Mosquitto child process on a free loopback port."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_conf: str = ""

    def start(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (make test installs it)")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"user {run_as_user()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.workdir}/\nmax_queued_messages 100000\nmax_inflight_messages 1000\n"
            f"log_dest file {self.workdir}/mosquitto.log\n{self.extra_conf}"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_mosquitto(workdir: Path) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(port=free_port(), workdir=workdir)
    broker.start()
    return broker


async def wait_for(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll until `predicate()` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result  # type: ignore[misc]
        if result:
            return result  # type: ignore[return-value]
        last = result
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


@dataclass
class StationHandle:
    base_url: str
    app: Any
    settings: Settings
    announcements: list[str]
    client: httpx.AsyncClient
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    @property
    def station_id(self) -> str:
        return self.ctx.default_station_id

    @property
    def mqtt_port(self) -> int:
        return self.settings.mqtt.port

    def setup_token(self) -> str:
        for line in self.announcements:
            if "setup?token=" in line:
                return line.rsplit("token=", 1)[1].strip()
        raise AssertionError("no setup link was announced")

    async def owner_headers(self) -> dict[str, str]:
        """Create the owner through the first-run setup API (once) and return auth headers."""
        if "owner" not in self._tokens:
            r = await self.client.post(
                "/api/v1/auth/setup",
                json={"token": self.setup_token(), "username": "owner", "password": "owner-password-1"},
            )
            assert r.status_code == 201, r.text
            self._tokens["owner"] = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._tokens['owner']}"}

    async def user_headers(self, username: str, role: str) -> dict[str, str]:
        """A user with `role`, created by the owner through the API."""
        if username not in self._tokens:
            owner = await self.owner_headers()
            password = f"{username}-password-1"
            r = await self.client.post(
                "/api/v1/users",
                headers=owner,
                json={"username": username, "password": password, "role": role},
            )
            assert r.status_code == 201, r.text
            r = await self.client.post(
                "/api/v1/auth/login", json={"username": username, "password": password}
            )
            assert r.status_code == 200, r.text
            self._tokens[username] = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._tokens[username]}"}

    async def create_device(self, device_id: str, type_id: str = "climate", **extra: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/api/v1/devices",
            headers=await self.owner_headers(),
            json={"id": device_id, "type": type_id, **extra},
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def device(self, device_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/devices/{device_id}", headers=await self.owner_headers())
        assert r.status_code == 200, r.text
        return dict(r.json())


@contextlib.asynccontextmanager
async def start_station(settings: Settings, demo: bool = False) -> AsyncIterator[StationHandle]:
    """The whole station (lifespan and all services) served by uvicorn on a free loopback port."""
    announcements: list[str] = []
    app = create_app(settings, AppOptions(demo=demo, announce=announcements.append))
    port = settings.http_port or free_port()
    settings.http_port = port
    # proxy_headers=False as in `waystation run`: only the app's own `trusted_proxies` setting believes
    # X-Forwarded-For (uvicorn would otherwise trust it from loopback, i.e. from every test client).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined,method-assign]
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), timeout=30, message="station start")
        if task.done():
            task.result()
            raise RuntimeError("station did not start")
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            handle = StationHandle(base_url, app, settings, announcements, client)
            if settings.mqtt.embedded is False:
                await wait_for(
                    lambda: handle.ctx.mqtt is not None and handle.ctx.mqtt.connected,
                    timeout=10,
                    message="station MQTT link",
                )
            yield handle
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)


class DeviceClient:
    """A test device: publishes protocol messages and records what the station sends it."""

    def __init__(self, port: int, station_id: str, device_id: str, *, will: bool = True) -> None:
        self.port = port
        self.station_id = station_id
        self.device_id = device_id
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._will = will
        self._client: aiomqtt.Client | None = None
        self._listener: asyncio.Task[None] | None = None

    def topic(self, suffix: str) -> str:
        return f"station/{self.station_id}/device/{self.device_id}/{suffix}"

    async def __aenter__(self) -> DeviceClient:
        will = aiomqtt.Will(self.topic("heartbeat"), b'{"status":"offline"}', qos=1) if self._will else None
        self._client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"test-{self.device_id}", will=will, keepalive=5
        )
        await self._client.__aenter__()
        await self._client.subscribe(self.topic("command"), qos=1)
        await self._client.subscribe(self.topic("handshake/ack"), qos=1)
        self._listener = asyncio.create_task(self._listen())
        return self

    async def _listen(self) -> None:
        assert self._client is not None
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self._client.messages:
                suffix = str(message.topic).split(f"/{self.device_id}/", 1)[1]
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.received.append((suffix, orjson.loads(message.payload)))  # type: ignore[arg-type]

    async def __aexit__(self, *exc: object) -> None:
        if self._listener:
            self._listener.cancel()
        if self._client:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)

    async def publish(self, suffix: str, payload: Any, qos: int = 1) -> None:
        assert self._client is not None
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        await self._client.publish(self.topic(suffix), raw, qos=qos)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    def messages(self, suffix: str) -> list[dict[str, Any]]:
        return [p for s, p in self.received if s == suffix]

    async def drop_connection(self) -> None:
        """Vanish without DISCONNECT so the broker publishes the will (as a crashed device would)."""
        assert self._client is not None
        if self._listener:
            self._listener.cancel()
        sock = self._client._client.socket()
        if sock is not None:
            sock.close()
        self._client = None


class HttpReceiver:
    """A real HTTP endpoint on a free loopback port that records POSTs and answers a chosen status."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = 200
        self.received: list[tuple[dict[str, str], bytes]] = []
        # Webhook tests: fail the next N requests with `fail_status`, hold each request `delay` seconds,
        # and count every request and the most ever in progress at once.
        self.fail_next = 0
        self.fail_status = 500
        self.delay = 0.0
        self.requests = 0
        self.in_progress = 0
        self.max_in_progress = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests += 1
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_progress -= 1
        status = self.status
        if self.fail_next > 0:
            self.fail_next -= 1
            status = self.fail_status
        if 200 <= status < 300:
            self.received.append((headers, body))
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async def start(self) -> None:
        config = uvicorn.Config(
            self._app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        await wait_for(lambda: self._server is not None and self._server.started, message="receiver start")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        self._server, self._task = None, None
