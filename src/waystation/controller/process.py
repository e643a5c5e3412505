"""The plugin controller process (`waystation controller`, PROTOCOLS §9).

    plugin instances (read loop each) → disk buffer → sender → station (WebSocket, or HTTP batch)
                                                      ↑ acks delete from the buffer
    station → `write` → the plugin instance owning the output channel → `write_result`

Every reading goes through the disk buffer (controller/buffer.py), so it is the same path whether the
station is up or not: readings leave the buffer only when the station acked their commit. The link
prefers the WebSocket; if only plain HTTP gets through it posts batches to `/api/v1/datapoints/batch`
and keeps trying the socket; if nothing gets through it waits with backoff while the buffer fills.
When the station is lost, and on shutdown, every plugin goes to its safe state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from waystation.controller.buffer import Buffered, DiskBuffer
from waystation.controller.settings import ControllerSettings
from waystation.plugins.registry import discover
from waystation.plugins.sdk import DevicePlugin, PluginConfigError, PluginError, Reading

log = logging.getLogger("waystation.controller")

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CONFIG_CACHE = "config.json"  # the last configuration fetched, so a restart during an outage still runs
AUTH_CLOSE_CODES = {4401, 4410}  # the station refused the token, or the controller was deleted/re-keyed
MAX_READ_FAILURES = 3  # consecutive failed reads before the plugin is closed and connected again


class StationUnreachable(Exception):
    """Neither the WebSocket nor HTTP got an answer from the station."""


class AuthRejected(Exception):
    """The station refused the controller token."""


def iso_from_us(ts_us: int) -> str:
    # Integer arithmetic: a float of epoch seconds cannot hold every microsecond, and the timestamp is
    # what makes a replayed reading recognisable as the same one.
    return (EPOCH + timedelta(microseconds=ts_us)).isoformat().replace("+00:00", "Z")


def us_from(ts: datetime) -> int:
    delta = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class MappingSpec:
    instance: str
    plugin_channel: str
    channel: str  # controller:{id}/{key}
    direction: str
    min: float | None
    max: float | None

    def in_range(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    name: str
    plugin: str
    config: dict[str, Any]
    enabled: bool
    interval_seconds: float

    @property
    def identity(self) -> str:
        """What must stay equal for a running instance to be kept as it is."""
        return json.dumps([self.plugin, self.config, self.interval_seconds], sort_keys=True, default=str)


class InstanceRunner:
    """Runs one plugin instance: connect (retried with backoff), then read at its interval."""

    def __init__(
        self,
        spec: InstanceSpec,
        plugin_cls: type[DevicePlugin] | None,
        unavailable: str,
        settings: ControllerSettings,
        deliver: Callable[[str, list[Reading]], None],
    ) -> None:
        self.spec = spec
        self._cls = plugin_cls
        self._unavailable = unavailable
        self._settings = settings
        self._deliver = deliver
        self.plugin: DevicePlugin | None = None
        self.state = "starting"
        self.message = ""
        self.readings = 0
        self.errors = 0
        self._lock = asyncio.Lock()  # the SDK promises plugins one call at a time
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"plugin-{self.spec.name}")

    async def _call(self, awaitable: Awaitable[T]) -> T:
        async with self._lock:
            return await asyncio.wait_for(awaitable, self._settings.plugin_timeout_seconds)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.message = f"{what}: {type(exc).__name__}: {exc}"[:300]

    async def _run(self) -> None:
        if self._cls is None:
            self.state, self.message = "error", self._unavailable
            log.error("instance %s: %s", self.spec.name, self._unavailable)
            return
        try:
            plugin = self._cls(self.spec.config)
        except PluginConfigError as exc:
            # A bad config does not fix itself: wait for the next configuration change.
            self.state, self.message = "error", f"config: {exc}"
            log.error("instance %s: invalid config: %s", self.spec.name, exc)
            return
        except Exception as exc:
            self.state = "error"
            self._fail("create", exc)
            log.exception("instance %s: the plugin could not be created", self.spec.name)
            return
        delay = self._settings.reconnect_min_seconds
        while True:
            try:
                await self._call(plugin.connect())
            except Exception as exc:
                self.state = "error"
                self._fail("connect", exc)
                log.warning("instance %s: %s; retrying in %.1fs", self.spec.name, self.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.reconnect_max_seconds)
                continue
            self.plugin = plugin
            self.state, self.message = "running", ""
            delay = self._settings.reconnect_min_seconds
            await self._read_loop(plugin)
            # Too many failed reads: start over with a fresh connection.
            self.plugin = None
            with contextlib.suppress(Exception):
                await self._call(plugin.close())

    async def _read_loop(self, plugin: DevicePlugin) -> None:
        interval = self.spec.interval_seconds
        failures = 0
        next_at = time.monotonic()
        while True:
            try:
                readings = await self._call(plugin.read())
            except Exception as exc:
                failures += 1
                self._fail("read", exc)
                log.warning("instance %s: %s", self.spec.name, self.message)
                if failures >= MAX_READ_FAILURES:
                    self.state = "error"
                    return
            else:
                failures = 0
                if self.state != "running":
                    self.state, self.message = "running", ""
                self.readings += len(readings)
                try:
                    self._deliver(self.spec.name, readings)
                except Exception as exc:  # e.g. the buffer's disk is full: keep reading, say so
                    self._fail("buffer", exc)
                    log.warning("instance %s: readings not buffered: %s", self.spec.name, self.message)
            # A steady cadence: a slow read eats into the pause instead of shifting every later read.
            next_at += interval
            now = time.monotonic()
            if next_at < now:
                next_at = now
            await asyncio.sleep(next_at - now)

    async def write(self, plugin_channel: str, value: float) -> None:
        plugin = self.plugin
        if plugin is None:
            raise PluginError(f"instance {self.spec.name!r} is not running ({self.state}: {self.message})")
        await self._call(plugin.write(plugin_channel, value))

    async def safe_state(self) -> None:
        plugin = self.plugin
        if plugin is None:
            return
        try:
            await self._call(plugin.safe_state())
        except Exception as exc:
            self._fail("safe_state", exc)
            log.error("instance %s: safe_state failed: %s", self.spec.name, self.message)

    async def stop(self) -> None:
        """Stop reading, put the outputs in their safe state, close the plugin."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        plugin = self.plugin
        await self.safe_state()
        if plugin is not None:
            try:
                await self._call(plugin.close())
            except Exception as exc:
                self._fail("close", exc)
        self.plugin = None
        self.state = "stopped"

    async def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "plugin": self.spec.plugin,
            "state": self.state,
            "message": self.message,
            "readings": self.readings,
            "errors": self.errors,
        }
        if self.plugin is not None:
            try:
                health = await self._call(self.plugin.health())
                out["health"] = {"ok": health.ok, "message": health.message, "details": dict(health.details)}
            except Exception as exc:
                out["health"] = {"ok": False, "message": f"{type(exc).__name__}: {exc}"[:300], "details": {}}
        return out


class Controller:
    def __init__(
        self, settings: ControllerSettings, plugins: dict[str, type[DevicePlugin]] | None = None
    ) -> None:
        self.settings = settings
        found, self.failed_plugins = discover()
        self.plugins = {**found, **(plugins or {})}
        self.buffer = DiskBuffer(
            settings.buffer_dir, max_rows=settings.buffer_max_rows, max_bytes=settings.buffer_max_bytes
        )
        self.runners: dict[str, InstanceRunner] = {}
        self.mappings: dict[str, dict[str, MappingSpec]] = {}  # instance → plugin channel → mapping
        self.outputs: dict[str, MappingSpec] = {}  # station channel → output mapping
        self.controller_id: str | None = None
        self.new_data = asyncio.Event()
        self.unmapped = 0  # readings of channels without a mapping (not sent)
        self.invalid = 0  # readings that are not finite numbers (not sent)
        self._last_ts: dict[str, int] = {}
        self._apply_lock = asyncio.Lock()
        self._drop_logged_at = 0.0
        self.link = StationLink(self)

    # --- configuration ------------------------------------------------------------------------------

    def load_cached_config(self) -> dict[str, Any] | None:
        path = self.settings.buffer_dir / CONFIG_CACHE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the cached configuration %s: %s", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def _cache_config(self, config: dict[str, Any]) -> None:
        path = self.settings.buffer_dir / CONFIG_CACHE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, sort_keys=True))
        tmp.replace(path)  # atomic: a crash leaves the old file or the new one, never half of one

    async def apply_config(self, config: dict[str, Any], *, cache: bool = True) -> None:
        """Start, restart or stop plugin instances so they match `config`, and take its mappings."""
        async with self._apply_lock:
            if cache:
                self._cache_config(config)
            self.controller_id = str(config.get("controller_id") or "") or None
            specs = {
                i["name"]: InstanceSpec(
                    name=i["name"],
                    plugin=i["plugin"],
                    config=dict(i.get("config") or {}),
                    enabled=bool(i.get("enabled", True)),
                    interval_seconds=float(i.get("interval_seconds") or 1.0),
                )
                for i in config.get("instances", [])
            }
            mappings: dict[str, dict[str, MappingSpec]] = {}
            outputs: dict[str, MappingSpec] = {}
            for m in config.get("mappings", []):
                mapping = MappingSpec(
                    instance=m["instance"],
                    plugin_channel=m["plugin_channel"],
                    channel=m["channel"],
                    direction=m.get("direction", "input"),
                    min=m.get("min"),
                    max=m.get("max"),
                )
                mappings.setdefault(mapping.instance, {})[mapping.plugin_channel] = mapping
                if mapping.direction == "output":
                    outputs[mapping.channel] = mapping
            self.mappings, self.outputs = mappings, outputs
            for name, runner in list(self.runners.items()):
                new = specs.get(name)
                if new is None or not new.enabled or new.identity != runner.spec.identity:
                    log.info("instance %s: stopping (%s)", name, "removed" if new is None else "changed")
                    await runner.stop()
                    del self.runners[name]
            for name, spec in specs.items():
                if spec.enabled and name not in self.runners:
                    cls = self.plugins.get(spec.plugin)
                    reason = self.failed_plugins.get(
                        spec.plugin, f"plugin {spec.plugin!r} is not installed on this controller"
                    )
                    runner = InstanceRunner(spec, cls, reason, self.settings, self.deliver)
                    self.runners[name] = runner
                    runner.start()
                    log.info("instance %s: started (%s, every %gs)", name, spec.plugin, spec.interval_seconds)

    # --- readings in ----------------------------------------------------------------------------------

    def deliver(self, instance: str, readings: list[Reading]) -> None:
        """Map a plugin's readings to station channels and append them to the disk buffer."""
        mapped = self.mappings.get(instance, {})
        now_us = time.time_ns() // 1000
        rows: list[tuple[str, int, float]] = []
        for reading in readings:
            spec = mapped.get(reading.channel)
            if spec is None:
                self.unmapped += 1
                continue
            value = reading.value
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                self.invalid += 1
                continue
            if reading.ts is not None:
                ts_us = us_from(reading.ts)
            else:
                # Stamped here: strictly increasing per channel, so no two readings share a timestamp.
                ts_us = max(now_us, self._last_ts.get(spec.channel, 0) + 1)
            self._last_ts[spec.channel] = max(ts_us, self._last_ts.get(spec.channel, 0))
            rows.append((spec.channel, ts_us, float(value)))
        if not rows:
            return
        dropped = self.buffer.append(rows)
        if dropped and time.monotonic() - self._drop_logged_at > 60:
            self._drop_logged_at = time.monotonic()
            log.warning(
                "buffer full (%d readings, %d bytes): dropped the %d oldest; %d dropped in all",
                self.buffer.rows,
                self.buffer.bytes,
                dropped,
                self.buffer.total("dropped"),
            )
        self.new_data.set()

    # --- station requests -------------------------------------------------------------------------------

    async def handle_write(self, channel: Any, value: Any) -> str | None:
        """Hand an actuator write to its plugin; returns None on success or the reason it failed."""
        spec = self.outputs.get(str(channel))
        if spec is None:
            return f"{channel!r} is not an output channel of this controller"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{value!r} is not a number"
        if not spec.in_range(float(value)):
            return f"{value} is outside the range of {channel} ({spec.min} to {spec.max})"
        runner = self.runners.get(spec.instance)
        if runner is None:
            return f"plugin instance {spec.instance!r} is not running"
        try:
            await runner.write(spec.plugin_channel, float(value))
        except TimeoutError:
            return f"the plugin did not answer within {self.settings.plugin_timeout_seconds:g}s"
        except PluginError as exc:
            return str(exc) or type(exc).__name__
        except Exception as exc:
            log.exception("instance %s: write failed", spec.instance)
            return f"{type(exc).__name__}: {exc}"
        log.info("wrote %s = %s", channel, value)
        return None

    async def safe_state_all(self) -> None:
        for runner in list(self.runners.values()):
            await runner.safe_state()

    async def status(self) -> dict[str, Any]:
        return {
            "link": self.link.state,
            "instances": {name: await r.status() for name, r in sorted(self.runners.items())},
            "buffer": {
                "rows": self.buffer.rows,
                "bytes": self.buffer.bytes,
                "dropped": self.buffer.total("dropped"),
                "rejected": self.buffer.total("rejected"),
            },
            "unmapped_readings": self.unmapped,
            "invalid_readings": self.invalid,
            "failed_plugins": dict(self.failed_plugins),
        }

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        cached = self.load_cached_config()
        if cached is not None:
            log.info("starting from the cached configuration until the station answers")
            await self.apply_config(cached, cache=False)
        link = asyncio.create_task(self.link.run(), name="station-link")
        try:
            await stop.wait()
        finally:
            log.info("stopping: plugins to their safe state")
            try:
                for runner in list(self.runners.values()):
                    await runner.stop()
                await self._flush(link)
            finally:
                # Always end the link, also when this shutdown is itself cancelled; and never swallow that
                # cancellation (gather returns the link's own CancelledError but lets ours through).
                link.cancel()
                await asyncio.gather(link, return_exceptions=True)
                await self.link.close()
                log.info("stopped; %d reading(s) stay buffered for the next start", self.buffer.rows)
                self.buffer.close()

    async def _flush(self, link: asyncio.Task[None]) -> None:
        """Give the link a few seconds to send what is buffered; the rest waits on disk."""
        deadline = time.monotonic() + self.settings.shutdown_flush_seconds
        while self.buffer.rows and self.link.state != "offline" and not link.done():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended. Python 3.11's `asyncio.wait_for` (used around every
    plugin call) can swallow a cancellation that arrives just as its inner call finishes (fixed in 3.12);
    a read loop then ran on and a controller hung on SIGTERM. So: cancel again until the task is done.
    The task's own error, if any, is not raised here (a stopping task's failure is not ours)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class StationLink:
    """Talks to the station: configuration over HTTP, readings over the WebSocket or HTTP batches."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.settings = controller.settings
        self.state = "starting"  # websocket | http | offline
        self._http = httpx.AsyncClient(
            base_url=self.settings.url,
            headers={"Authorization": f"Bearer {self.settings.token}"},
            timeout=self.settings.http_timeout_seconds,
        )
        self._seq = 0
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._config_stale = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = False  # whether the last WebSocket attempt got connected
        self.sent = 0  # readings acked by the station

    async def close(self) -> None:
        await self._http.aclose()

    async def _go_offline(self, why: str) -> None:
        if self.state != "offline":
            log.warning("station unreachable (%s); buffering on disk, plugins to their safe state", why)
            self.state = "offline"
            await self.c.safe_state_all()

    async def run(self) -> None:
        delay = self.settings.reconnect_min_seconds
        while True:
            try:
                await self.refresh_config()
            except AuthRejected as exc:
                await self._go_offline("token refused")
                log.error("the station refused the controller token: %s", exc)
                await asyncio.sleep(self.settings.reconnect_max_seconds)
                continue
            except StationUnreachable as exc:
                await self._go_offline(str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_seconds)
                continue
            except Exception:
                # An unexpected answer or a local failure (caching the configuration): never let the link
                # die silently while the plugins keep buffering; log it and try again later.
                log.exception("applying the station's configuration failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_seconds)
                continue
            self._opened = False
            try:
                await self._websocket()  # returns only by raising, when the socket ends
            except AuthRejected as exc:
                await self._go_offline("token refused")
                log.error("the station refused the controller token: %s", exc)
                await asyncio.sleep(self.settings.reconnect_max_seconds)
                continue
            except (OSError, TimeoutError, websockets.WebSocketException, StationUnreachable) as exc:
                log.info("WebSocket unavailable (%s: %s)", type(exc).__name__, exc)
            except Exception:
                log.exception("the WebSocket session failed unexpectedly; falling back to HTTP and retrying")
            if self._opened:
                delay = self.settings.reconnect_min_seconds  # it worked until now: retry quickly
            # The socket is down. Carry on over HTTP until the next attempt; if HTTP fails too, the
            # station is gone and the loop starts over from the configuration fetch.
            try:
                await self._http_until(time.monotonic() + delay)
            except StationUnreachable as exc:
                await self._go_offline(str(exc))
            except AuthRejected as exc:
                await self._go_offline("token refused")
                log.error("the station refused the controller token: %s", exc)
                await asyncio.sleep(self.settings.reconnect_max_seconds)
            delay = min(delay * 2, self.settings.reconnect_max_seconds)

    async def refresh_config(self) -> None:
        try:
            response = await self._http.get("/api/v1/controllers/me/config")
        except httpx.HTTPError as exc:
            raise StationUnreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 401:
            raise AuthRejected(_detail(response))
        if response.status_code != 200:
            raise StationUnreachable(f"configuration: HTTP {response.status_code}")
        await self.c.apply_config(response.json())

    # --- WebSocket -------------------------------------------------------------------------------------

    async def _websocket(self) -> None:
        async with connect(
            self.settings.websocket_url,
            additional_headers={"Authorization": f"Bearer {self.settings.token}"},
            open_timeout=self.settings.http_timeout_seconds,
            ping_interval=10,
            ping_timeout=10,
        ) as ws:
            self.state = "websocket"
            self._opened = True
            log.info(
                "connected to %s (%d buffered reading(s) to send)",
                self.settings.websocket_url,
                self.c.buffer.rows,
            )
            tasks = [
                asyncio.create_task(self._receive(ws)),
                asyncio.create_task(self._send_batches(ws)),
                asyncio.create_task(self._report_status(ws)),
                asyncio.create_task(self._follow_config()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    await cancel_and_wait(task)
                for future in self._answers.values():
                    if not future.done():
                        future.cancel()
                self._answers.clear()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if ws.close_code in AUTH_CLOSE_CODES:
                raise AuthRejected(ws.close_reason or f"closed with {ws.close_code}")
            raise StationUnreachable(f"the WebSocket closed ({ws.close_code} {ws.close_reason or ''})")

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await ws.send(orjson.dumps(message).decode())

    async def _receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("ignoring a message from the station that is not JSON")
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind in ("ack", "error"):
                future = self._answers.get(message.get("seq"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(message)
                elif kind == "error":
                    log.warning("station error: %s %s", message.get("code"), message.get("message"))
            elif kind == "write":
                self._spawn(self._write(ws, message))
            elif kind == "config_changed":
                self._config_stale.set()

    async def _write(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        error = await self.c.handle_write(message.get("channel"), message.get("value"))
        answer: dict[str, Any] = {"type": "write_result", "id": message.get("id"), "ok": error is None}
        if error is not None:
            answer["error"] = error
        with contextlib.suppress(websockets.WebSocketException):
            await self._send(ws, answer)

    async def _send_batches(self, ws: ClientConnection) -> None:
        buffer = self.c.buffer
        while True:
            batch = buffer.peek(self.settings.batch_items)
            if not batch:
                self.c.new_data.clear()
                await self.c.new_data.wait()
                continue
            self._seq += 1
            seq = self._seq
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._answers[seq] = future
            try:
                await self._send(ws, {"type": "datapoints", "seq": seq, "items": _items(batch)})
                try:
                    answer = await asyncio.wait_for(future, self.settings.ack_timeout_seconds)
                except TimeoutError as exc:
                    raise StationUnreachable(f"no ack within {self.settings.ack_timeout_seconds:g}s") from exc
            finally:
                self._answers.pop(seq, None)
            if answer.get("type") == "ack":
                buffer.remove(batch)
                self.sent += len(batch)
            elif answer.get("retry"):
                log.warning("station could not store a batch (%s); retrying", answer.get("message"))
                await asyncio.sleep(self.settings.reconnect_min_seconds)
            else:
                self._reject(batch, f"{answer.get('code')}: {answer.get('message')}")

    def _reject(self, batch: list[Buffered], why: str) -> None:
        # Sending it again cannot work (a channel outside this controller, a bad value): dropping it
        # is the only way forward, so it is counted and logged.
        log.error("the station refused %d reading(s) for good (%s); dropped", len(batch), why)
        self.c.buffer.remove(batch, outcome="rejected")

    async def _report_status(self, ws: ClientConnection) -> None:
        while True:
            await self._send(ws, {"type": "status", "status": await self.c.status()})
            await asyncio.sleep(self.settings.status_interval_seconds)

    async def _follow_config(self) -> None:
        while True:
            await self._config_stale.wait()
            self._config_stale.clear()
            log.info("configuration changed; fetching it")
            await self.refresh_config()

    # --- HTTP fallback --------------------------------------------------------------------------------------

    async def _http_until(self, deadline: float) -> None:
        """Post buffered readings over HTTP until `deadline` (then the WebSocket is tried again)."""
        if self.state != "http":
            log.info("sending over HTTP (POST /api/v1/datapoints/batch) while the WebSocket is down")
            self.state = "http"
        buffer = self.c.buffer
        while (remaining := deadline - time.monotonic()) > 0:
            batch = buffer.peek(self.settings.batch_items)
            if not batch:
                self.c.new_data.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.c.new_data.wait(), remaining)
                continue
            try:
                response = await self._http.post("/api/v1/datapoints/batch", json={"items": _items(batch)})
            except httpx.HTTPError as exc:
                raise StationUnreachable(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code == 200:
                buffer.remove(batch)
                self.sent += len(batch)
            elif response.status_code == 401:
                raise AuthRejected(_detail(response))
            elif response.status_code in (403, 422):
                self._reject(batch, f"HTTP {response.status_code}: {_detail(response)}")
            else:  # 5xx, 429: the station is there but cannot take it now
                log.warning("batch over HTTP failed (%d); retrying", response.status_code)
                await asyncio.sleep(min(remaining, self.settings.reconnect_min_seconds))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)


def _items(batch: list[Buffered]) -> list[dict[str, Any]]:
    return [{"channel": b.channel, "value": b.value, "ts": iso_from_us(b.ts_us)} for b in batch]


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.status_code))
    except ValueError:
        return f"HTTP {response.status_code}"


async def run_controller(
    settings: ControllerSettings, plugins: dict[str, type[DevicePlugin]] | None = None
) -> None:
    """Run until SIGTERM or SIGINT (Ctrl-C), then stop cleanly: outputs safe, buffer flushed or kept."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows' default loop
            loop.add_signal_handler(sig, stop.set)
    controller = Controller(settings, plugins)
    log.info(
        "controller for %s, buffer %s (%d readings waiting); plugins: %s",
        settings.url,
        settings.buffer_dir,
        controller.buffer.rows,
        ", ".join(sorted(controller.plugins)) or "none",
    )
    await controller.run(stop)
