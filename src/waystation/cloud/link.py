"""`CloudLink`: the supervised service that keeps the station connected to its cloud (PROTOCOLS §7).

One visible reconnect loop: connect → `claim_handshake` (while unclaimed) → `station_auth` → JSON-RPC both
ways until the socket dies → backoff → again. WebSocket pings (websockets' keepalive) end a connection
whose cloud gives no pong before the next ping. The backoff doubles from `cloud_backoff_initial_seconds`
to `cloud_backoff_max_seconds` with ±`cloud_backoff_jitter`, and starts over once a connection has proved
itself by answering a ping. Every state change is published as `cloud.status_changed`.

The link speaks for one station, the installation's default one (`station_id`): its methods, its
notifications and `station_reset` reach only that station's devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from waystation.audit import service as audit
from waystation.bus import Bus, Gap, TypeFilter
from waystation.cloud import messages
from waystation.cloud import service as cloud_service
from waystation.cloud.jsonrpc import JsonRpcPeer, RpcClosed, dumps
from waystation.cloud.methods import CLOUD_ACTOR, build_methods
from waystation.cloud.models import CONFIG_ROW_ID, CloudConfig
from waystation.cloud.notifications import BUS_TYPES, NotificationQueue, to_notification
from waystation.config import Settings
from waystation.db import Database
from waystation.devices.models import Device
from waystation.devices.runtime import DeviceRuntime
from waystation.errors import WaystationError
from waystation.secrets_box import SecretBox

log = logging.getLogger(__name__)

State = Literal["disabled", "connecting", "claiming", "authenticating", "connected", "backoff"]
STATUS_EVENT = "cloud.status_changed"
# Internal and bridged to every worker (cluster/bridge.py): a claim or unclaim answered by a follower
# reaches the link on the leader, and a follower asks the leader for its status.
CONTROL_EVENT = "_cloud.control"
FOLLOW_ASK_SECONDS = 3.0
PLAIN_QUEUE = 1000  # plain cloud messages waiting to be applied, in order
MAX_TOKEN_LENGTH = 512
MAX_REASON_LENGTH = 200  # of a cloud-supplied reason, before it reaches last_error, SSE and the log


class LinkRefused(Exception):
    """The cloud answered, but not with what the protocol expects (claim or token refused, junk)."""


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float, rand: float) -> float:
    """min(maximum, initial·2^attempt), moved by up to ±jitter (rand is uniform in [0, 1))."""
    base = min(maximum, initial * float(2 ** min(attempt, 30)))
    return base * (1.0 + jitter * (2.0 * rand - 1.0))


def display_url(url: str | None) -> str | None:
    """The URL without credentials or query (either may carry a secret)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def cloud_reason(message: dict[str, Any]) -> str:
    """The `reason` of an auth_failed/claim_failed, made safe to show: text, one line, bounded."""
    reason = message.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return "no reason"
    text = " ".join(reason.split())
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


def describe(exc: BaseException) -> str:
    """A short reason for `last_error`, without URLs or tokens."""
    if isinstance(exc, LinkRefused):
        return str(exc)
    if isinstance(exc, InvalidStatus):
        return f"the cloud answered HTTP {exc.response.status_code} instead of a WebSocket"
    if isinstance(exc, InvalidURI):
        return "the cloud URL is not a valid ws:// or wss:// URL"
    if isinstance(exc, ConnectionClosed):
        reason = exc.rcvd.reason if exc.rcvd else (exc.sent.reason if exc.sent else "")
        return f"connection closed{': ' + reason if reason else ''}"
    if isinstance(exc, TimeoutError):
        return "the cloud did not answer in time"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or type(exc).__name__}"
    return f"link error: {type(exc).__name__}"


def terminate_process() -> None:
    """Default end of `station_reset`: SIGTERM to ourselves, so uvicorn shuts down gracefully and the
    supervisor (systemd, Docker) starts a clean station."""
    os.kill(os.getpid(), signal.SIGTERM)


class CloudLink:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        box: SecretBox,
        devices: DeviceRuntime | None,
        station_id: str,
        exit_process: Callable[[], None] = terminate_process,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.box = box
        self.devices = devices
        self.station_id = station_id
        self.exit_process = exit_process
        self.state: State = "disabled"
        self.enabled = False
        self.url: str | None = None
        self.claimed = False
        self.claimed_at: datetime | None = None
        self.last_error: str | None = None
        self.connected_since: datetime | None = None
        self.next_retry_at: datetime | None = None
        self.active: frozenset[str] = frozenset()
        self.queue = NotificationQueue(settings.cloud_queue_size)
        self.methods = build_methods(db, devices, self.set_active_channels, station_id)
        self._attempt = 0
        self._proved = False
        self._wake = asyncio.Event()
        self._outbox = asyncio.Event()
        self._plain: asyncio.Queue[dict[str, Any]] = asyncio.Queue(PLAIN_QUEUE)
        self._ws: ClientConnection | None = None
        self._peer: JsonRpcPeer | None = None
        self._overflow_logged = False
        self._last_sent = 0.0
        self._closing: set[asyncio.Task[None]] = set()  # socket closes under way (kept: tasks are weak)
        self.running = False  # this process runs the link (with several workers: only the leader)
        self.leader_status: dict[str, Any] | None = None  # the leader's last status, on the others
        # Subscribed from the start, so events of the first moments are not missed; this station only.
        self._sub = bus.subscribe(
            TypeFilter(BUS_TYPES), maxsize=settings.cloud_queue_size, station_ids={station_id}
        )

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The link's state for `GET /api/v1/cloud/status` and `cloud.status_changed` (nothing secret).
        A worker that does not run the link answers with what the leader last reported."""
        if not self.running and self.leader_status is not None:
            return dict(self.leader_status)
        return self._own_status()

    def _own_status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "enabled": self.enabled,
            "url": display_url(self.url),
            "claimed": self.claimed,
            "claimed_at": self.claimed_at.isoformat() if self.claimed_at else None,
            "last_error": self.last_error,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "next_retry_at": self.next_retry_at.isoformat() if self.next_retry_at else None,
            "queue_depth": len(self.queue),
            "queue_overflow": self.queue.overflow,
            "active_channels": sorted(self.active),
        }

    def _set_state(self, state: State, *, force: bool = False) -> None:
        if state == self.state and not force:
            return
        self.state = state
        if state != "backoff":
            self.next_retry_at = None
        if state != "connected":
            self.connected_since = None
        self._announce()

    def _announce(self) -> None:
        """`cloud.status_changed` for clients, and the same status for the other workers (internal)."""
        status = self._own_status()
        self.bus.emit(STATUS_EVENT, status)
        self._report(status)

    def _report(self, status: dict[str, Any] | None = None) -> None:
        self.bus.emit(
            CONTROL_EVENT, {"op": "report", "running": self.running, "status": status or self._own_status()}
        )

    # --- control (REST routes, JSON-RPC methods) ---------------------------------------------------

    def reconfigure(self, *, disconnect: bool = False, reason: str = "unclaimed") -> None:
        """The configuration row changed (claim, unclaim, a new URL): act on it now, not after the
        backoff. `disconnect` drops the current connection and what was queued for that cloud."""
        if disconnect:
            self.queue.clear()
            self.active = frozenset()
            if self._ws is not None:
                task = asyncio.get_running_loop().create_task(self._ws.close(1000, reason))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._wake.set()

    def request_reconfigure(self, *, disconnect: bool = False, reason: str = "unclaimed") -> None:
        """`reconfigure` here and, with several workers, on the leader that runs the link."""
        self.reconfigure(disconnect=disconnect, reason=reason)
        self.bus.emit(CONTROL_EVENT, {"op": "reconfigure", "disconnect": disconnect, "reason": reason})

    def assume(self, **fields: Any) -> None:
        """A route changed the configuration here: show it at once, also on a worker that answers with
        the leader's status (the leader's own report follows when it has acted on it)."""
        for name, value in fields.items():
            setattr(self, name, value)
        if self.leader_status is not None:
            self.leader_status.update(
                {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in fields.items()}
            )

    async def follow_leader(self) -> None:
        """On every worker of a cluster: keep the status the worker running the link reports, so that
        `status()` is right where it does not run. Until a report came, ask for one every few seconds (a
        first request can go out before the leader listens)."""
        sub = self.bus.subscribe(TypeFilter([CONTROL_EVENT]), maxsize=100)
        leader: str | None = None  # the worker whose reports are followed
        asked = -FOLLOW_ASK_SECONDS
        try:
            while True:
                now = time.monotonic()
                if self.leader_status is None and not self.running and now - asked >= FOLLOW_ASK_SECONDS:
                    asked = now  # our own request comes back here too: ask again only after a while
                    self.bus.emit(CONTROL_EVENT, {"op": "status"})
                try:
                    # Not wait_for: on Python 3.11 it swallows a cancellation that meets a ready result.
                    async with asyncio.timeout(FOLLOW_ASK_SECONDS):
                        ev = await sub.get()
                except TimeoutError:
                    continue
                if isinstance(ev, Gap) or ev.origin is None or ev.data.get("op") != "report":
                    continue
                status = ev.data.get("status")
                if ev.data.get("running") and isinstance(status, dict):
                    leader, self.leader_status = ev.origin, dict(status)
                elif ev.origin == leader:  # the link stopped there (leadership lost or shutdown)
                    leader, self.leader_status = None, None
        finally:
            sub.close()

    async def _obey_followers(self) -> None:
        """On the worker that runs the link: requests bridged from the others (their own are applied
        where they were made)."""
        sub = self.bus.subscribe(TypeFilter([CONTROL_EVENT]), maxsize=100)
        try:
            while True:
                ev = await sub.get()
                if isinstance(ev, Gap) or ev.origin is None:
                    continue
                if ev.data.get("op") == "reconfigure":
                    reason = str(ev.data.get("reason", ""))[:100]
                    self.reconfigure(disconnect=bool(ev.data.get("disconnect")), reason=reason)
                elif ev.data.get("op") == "status":
                    self._report()
        finally:
            sub.close()

    async def set_active_channels(self, channels: list[str]) -> None:
        async with self.db.session() as session:
            await cloud_service.set_active_channels(session, self.box, channels)
            audit.record(
                session,
                actor=CLOUD_ACTOR,
                action="cloud.set_active_channels",
                target="cloud",
                summary=", ".join(channels) or "none",
                station_id=self.station_id,
            )
        self.active = frozenset(channels)
        self._announce()

    async def call(self, method: str, params: Any = None, within: float | None = None) -> Any:
        """A JSON-RPC request to the cloud; `RpcError` if it fails, times out or the link is down."""
        peer = self._peer
        if peer is None or self.state != "connected":
            raise RpcClosed()
        return await peer.call(method, params, within)

    # --- the service -------------------------------------------------------------------------------

    async def run(self) -> None:
        self.running, self.leader_status = True, None  # the first announce makes the others follow here
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._obey_followers())
                tasks.create_task(self._pump())
                tasks.create_task(self._apply_plain())
                tasks.create_task(self._connect_loop())
        finally:
            self.running = False
            self._set_state("disabled", force=True)  # also tells the other workers the link stopped here

    async def _read_config(self) -> cloud_service.LinkConfig | None:
        async with self.db.session() as session:
            row = await session.get(CloudConfig, CONFIG_ROW_ID)
            config = cloud_service.read(row, self.box) if row is not None else None
        self.enabled = bool(config and config.enabled)
        self.url = (config.url if config else None) or self.settings.cloud_url
        self.claimed = bool(config and config.station_token)
        self.claimed_at = config.claimed_at if config else None
        self.active = frozenset(config.active_channels) if config else frozenset()
        return config

    async def _connect_loop(self) -> None:
        while True:
            self._wake.clear()
            config = await self._read_config()
            if config is None or not config.enabled or not self.url:
                # Announced even when it stays "disabled": the configuration just read may differ.
                self._set_state("disabled", force=True)
                await self._wake.wait()
                continue
            try:
                await self._session(self.url, config)
            except (OSError, TimeoutError, WebSocketException, LinkRefused, ValueError) as exc:
                # ValueError: a URL the client cannot use (UnicodeError is one); wait and retry, never crash.
                self.last_error = describe(exc)
                log.info("cloud link: %s", self.last_error)
            if self._proved:
                self._attempt = 0
            if self._wake.is_set():
                continue  # reconfigured (claim, unclaim, reset): no backoff
            rand = random.random()
            delay = backoff_delay(
                self._attempt,
                self.settings.cloud_backoff_initial_seconds,
                self.settings.cloud_backoff_max_seconds,
                self.settings.cloud_backoff_jitter,
                rand,
            )
            self._attempt += 1
            self.next_retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            self._set_state("backoff", force=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _session(self, url: str, config: cloud_service.LinkConfig) -> None:
        """One connection, from connect to close. Sets `_proved` if the cloud answered a ping."""
        s = self.settings
        self._proved = False
        if not cloud_service.url_allowed(url):  # WAYSTATION_CLOUD_URL is not checked elsewhere
            raise LinkRefused("the cloud URL must use wss:// (plain ws:// only to a loopback address)")
        self._set_state("connecting")
        ws = await connect(
            url,
            ping_interval=s.cloud_ping_interval_seconds,
            ping_timeout=s.cloud_ping_interval_seconds,  # no pong by the next ping: the link is dead
            close_timeout=min(s.cloud_ping_interval_seconds, 10.0),
            open_timeout=s.cloud_rpc_timeout_seconds,
        )
        self._ws = ws
        try:
            token = config.station_token
            if token is None:
                token = await self._claim(ws, config)
            self._set_state("authenticating")
            await ws.send(dumps({"type": "station_auth", "stationToken": token}))
            reply = await self._expect(ws, ("auth_ok", "auth_failed"))
            if reply["type"] != "auth_ok":
                raise LinkRefused(f"the cloud refused the station token: {cloud_reason(reply)}")
            peer = JsonRpcPeer(
                ws.send, self.methods, timeout=s.cloud_rpc_timeout_seconds, on_plain=self._plain_in
            )
            self._peer = peer
            self.last_error = None
            self.connected_since = datetime.now(UTC)
            self._set_state("connected")
            sender = asyncio.get_running_loop().create_task(self._send_notifications(peer))
            try:
                async for raw in ws:
                    await peer.feed(raw)
            finally:
                sender.cancel()
                peer.close()
                self._peer = None
        finally:
            self._ws = None
            self._proved = ws.latency > 0
            await ws.close()

    async def _claim(self, ws: ClientConnection, config: cloud_service.LinkConfig) -> str:
        self._set_state("claiming")
        await ws.send(
            dumps({"type": "claim_handshake", "chipId": config.chip_id, "claimSecret": config.claim_secret})
        )
        reply = await self._expect(ws, ("claim_success", "claim_failed"))
        token = reply.get("stationToken")
        if reply["type"] != "claim_success":
            raise LinkRefused(f"the cloud refused the claim: {cloud_reason(reply)}")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
            raise LinkRefused("the cloud's claim_success carried no usable stationToken")
        async with self.db.session() as session:
            await cloud_service.store_token(session, self.box, token)
            audit.record(
                session,
                actor=CLOUD_ACTOR,
                action="cloud.claimed",
                target="cloud",
                summary=f"claimed by {display_url(self.url)}",
                station_id=self.station_id,
            )
        self.claimed, self.claimed_at = True, datetime.now(UTC)
        log.info("cloud link: the station is claimed")
        return token

    async def _expect(self, ws: ClientConnection, types: tuple[str, ...]) -> dict[str, Any]:
        """The next message of one of `types`; others are skipped. Within the RPC timeout."""
        async with asyncio.timeout(self.settings.cloud_rpc_timeout_seconds):
            while True:
                raw = await ws.recv()
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(message, dict) and message.get("type") in types:
                    return message
                log.debug("cloud link: skipped a message while waiting for %s", "/".join(types))

    # --- notifications -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Bus events on active channels → the queue (whether or not the link is up)."""
        async for item in self._sub:
            if isinstance(item, Gap):
                if self.active:
                    self.queue.count_lost(item.dropped)
                continue
            notification = to_notification(item)
            if notification is None or notification.method not in self.active:
                continue
            if self.queue.put(notification) and not self._overflow_logged:
                self._overflow_logged = True
                log.warning(
                    "cloud link: notification queue full (%d); dropping the oldest until it drains",
                    self.queue.maxsize,
                )
            self._outbox.set()

    async def _send_notifications(self, peer: JsonRpcPeer) -> None:
        """Send the queue in order, at most `cloud_replay_rate` per second. An entry leaves the queue only
        once it was written to the socket: one that was in flight when the link died goes again."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.settings.cloud_replay_rate
        try:
            while True:
                item = self.queue.peek()
                if item is None:
                    self._overflow_logged = False
                    self._outbox.clear()
                    await self._outbox.wait()
                    continue
                wait = self._last_sent + interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                await peer.notify(item.method, item.params)
                self._last_sent = loop.time()
                self.queue.pop(item)
        except ConnectionClosed:
            return

    # --- plain messages ----------------------------------------------------------------------------

    def _plain_in(self, message: dict[str, Any]) -> None:
        try:
            self._plain.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("cloud link: too many plain messages waiting; dropped a %s", message.get("type"))

    async def _apply_plain(self) -> None:
        while True:
            message = await self._plain.get()
            kind = str(message.get("type"))
            try:
                if kind == "station_reset":
                    await self.station_reset()
                elif kind in messages.PLAIN_TYPES:
                    await self._apply_message(kind, message)
                else:
                    log.info("cloud link: ignored a message of unknown type %r", kind[:64])
            except Exception:
                log.exception("cloud link: applying %s failed", kind[:64])

    async def _apply_message(self, kind: str, message: dict[str, Any]) -> None:
        try:
            async with self.db.session() as session:
                summary = await messages.apply(session, message, self.station_id)
                self._audit(session, kind, summary)
        except messages.MessageInvalid as exc:
            log.warning("cloud link: refused %s: %s", kind, exc)
            async with self.db.session() as session:
                self._audit(session, kind, f"refused: {exc}")

    def _audit(self, session: Any, kind: str, summary: str) -> None:
        audit.record(
            session,
            actor=CLOUD_ACTOR,
            action=f"cloud.{kind}",
            target="cloud",
            summary=summary[:500],
            station_id=self.station_id,
        )

    async def station_reset(self) -> None:
        """Wipe `cloud_config` and the cloud's users, send `factory_reset` to every device of the link's
        station, then ask the process to exit."""
        async with self.db.session() as session:
            await cloud_service.wipe(session)
            users = await messages.forget_cloud_users(session, self.station_id)
            device_ids = list(
                (
                    await session.scalars(
                        select(Device.id).where(
                            Device.enabled.is_(True), Device.station_id == self.station_id
                        )
                    )
                ).all()
            )
            self._audit(
                session,
                "station_reset",
                f"cloud configuration wiped; {users}; factory_reset to {len(device_ids)} devices",
            )
        self.queue.clear()
        self.active, self.claimed, self.claimed_at, self.enabled = frozenset(), False, None, False
        if self.devices is not None:
            for device_id in device_ids:
                try:
                    await self.devices.submit_command(device_id, "factory_reset", {}, CLOUD_ACTOR, None)
                except WaystationError as exc:
                    log.warning("cloud link: factory_reset to %s not sent: %s", device_id, exc.code)
        log.warning("cloud link: station_reset from the cloud; the station exits to restart clean")
        self.reconfigure(disconnect=True, reason="station reset")
        self.exit_process()
