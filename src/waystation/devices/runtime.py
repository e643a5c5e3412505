"""The live side of devices: MQTT messages in, batched writes, presence, and command dispatch.

Read top to bottom: `on_message` (MQTT thread → loop) validates and records into small coalescing
buffers; `flush` writes everything pending in one transaction every `device_flush_interval_ms` and
publishes the bus events after the commit; `watch` marks silent devices offline and times out commands.
A directory of known devices (id → station, type) is kept in memory so a message costs no query.

With several workers (`shared`, docs/scaling.md) each one sees only some of a device's messages, so
the database decides: a status change is announced only by the worker whose guarded UPDATE changed the
row, and the presence watchdog runs on the leader only, from the `last_seen` every worker flushes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.bus import Bus, Gap, TypeFilter
from waystation.config import Settings
from waystation.db import Database, emit, in_list
from waystation.devices import protocol
from waystation.devices.models import Command, Device, DeviceEvent
from waystation.devices.protocol import (
    CommandAck,
    DeviceEventMsg,
    Handshake,
    Heartbeat,
    Rejection,
    StateReport,
)
from waystation.devices.service import get_device, get_type
from waystation.devices.types import validate_command
from waystation.errors import DeviceDisabled
from waystation.logs import RateLimitedLog
from waystation.mqtt.link import MqttLink
from waystation.mqtt.topics import MessageInfo
from waystation.status.metrics import Metrics
from waystation.telemetry.ingest import IngestPipeline

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 10_000
MAX_LOOKUPS = 100  # concurrent database look-ups of unknown device ids
MAX_WAITING = 10_000  # messages waiting, in all, for the look-up of their device already under way
UNKNOWN_DEVICE_RECHECK_SECONDS = 10.0  # an id not in the database is not looked up again sooner
LAST_SEEN_WRITE_INTERVAL = 15.0  # seconds; last_seen is kept exact in memory, persisted at this pace
_ACK_FROM = {
    "accepted": ("queued", "sent", "timeout"),
    "applied": ("queued", "sent", "accepted", "timeout"),
    "failed": ("queued", "sent", "accepted", "timeout"),
}


@dataclass
class KnownDevice:
    station_id: str
    type: str
    status: str
    last_seen: float = 0.0  # wall-clock seconds
    persisted_seen: float = 0.0
    enabled: bool = True


@dataclass
class Pending:
    """Everything received since the last flush, coalesced per device."""

    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_ts: dict[str, datetime] = field(default_factory=dict)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    acks: list[tuple[str, CommandAck]] = field(default_factory=list)
    online_again: set[str] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.state or self.fields or self.status or self.seen or self.events or self.acks)


class DeviceRuntime:
    def __init__(self, settings: Settings, db: Database, bus: Bus, metrics: Metrics) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.metrics = metrics
        self.link: MqttLink | None = None
        self.ingest: IngestPipeline | None = None
        self.known: dict[str, KnownDevice] = {}
        self._pending = Pending()
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._bad_input_log = RateLimitedLog(log, 60.0)
        self.dropped_events = 0
        self._background: set[asyncio.Task[None]] = set()
        self._lookups: set[asyncio.Task[None]] = set()
        # Messages of a device whose look-up is under way wait for it (one query per device, in order):
        # a device created on another worker can send a burst before this worker knows it.
        self._waiting: dict[str, list[tuple[protocol.DeviceTopic, protocol.Message, str, MessageInfo]]] = {}
        self._waiting_count = 0
        self._not_found: dict[str, float] = {}
        # Per action, a last touch to a command's parameters when it actually goes out (OTA re-signs its
        # short-lived download link, so a command queued for an offline device still works when sent).
        self.before_send: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        # Several workers: statuses are claimed in the database, the watchdog runs where `is_leader()`.
        self.shared = False
        self.is_leader: Callable[[], bool] = lambda: True
        self.seen_write_interval = LAST_SEEN_WRITE_INTERVAL

    def share(self, is_leader: Callable[[], bool]) -> None:
        """Run as one of several workers: `last_seen` is flushed often enough for the leader's watchdog
        (a quarter of the heartbeat timeout at most), and statuses are decided in the database."""
        self.shared = True
        self.is_leader = is_leader
        self.seen_write_interval = min(LAST_SEEN_WRITE_INTERVAL, self.settings.heartbeat_timeout_seconds / 4)

    # --- set-up ----------------------------------------------------------------------------------

    async def load(self) -> None:
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(
                        Device.id,
                        Device.station_id,
                        Device.type,
                        Device.status,
                        Device.last_seen,
                        Device.enabled,
                    )
                )
            ).all()
        now = time.time()
        for device_id, station_id, type_id, status, last_seen, enabled in rows:
            seen = last_seen.timestamp() if last_seen else 0.0
            # A device that was online when we stopped gets a full timeout to speak up again.
            self.known[device_id] = KnownDevice(
                station_id,
                type_id,
                status,
                last_seen=max(seen, now) if status == "online" else seen,
                persisted_seen=seen,
                enabled=bool(enabled),
            )
        self._update_online_gauge()

    def attach(self, link: MqttLink) -> None:
        self.link = link
        link.subscribe(f"{protocol.TOPIC_ROOT}/#", self.on_message, qos=1)
        link.add_connection_listener(self._on_link_change)

    def device_added(self, device_id: str, station_id: str, type_id: str) -> None:
        self.known[device_id] = KnownDevice(station_id, type_id, "unknown")
        self._not_found.pop(device_id, None)

    def device_enabled(self, device_id: str, enabled: bool) -> None:
        """A disabled device's messages are dropped and it gets no commands, also on brokers that cannot
        cut it off at once (emqx-http keeps a session until its cache expires)."""
        known = self.known.get(device_id)
        if known is not None:
            known.enabled = enabled

    def device_removed(self, device_id: str) -> None:
        self.known.pop(device_id, None)
        self._update_online_gauge()

    # --- MQTT in -----------------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, info: MessageInfo) -> None:
        parts = protocol.parse_topic(topic)
        if parts is None:
            self._reject(
                protocol.Rejection(protocol.UNKNOWN_TOPIC, "topic does not match the device layout"),
                topic,
                None,
            )
            return
        if parts.suffix in protocol.OUTGOING_SUFFIXES:
            return
        if parts.suffix not in protocol.INCOMING_SUFFIXES:
            self._reject(
                Rejection(protocol.UNKNOWN_TOPIC, f"unknown topic suffix {parts.suffix!r}"),
                topic,
                parts.device_id,
            )
            return
        data = protocol.decode(payload, self.settings.max_payload_bytes)
        if isinstance(data, Rejection):
            self._reject(data, topic, parts.device_id)
            return
        message = protocol.parse_message(parts.suffix, data)
        if isinstance(message, Rejection):
            self._reject(message, topic, parts.device_id)
            return
        device = self.known.get(parts.device_id)
        if device is None:
            # Maybe created by another process (CLI, another worker): look it up once, off the hot path.
            self._lookup_unknown(parts, message, topic, info)
            return
        if device.station_id != parts.station_id:
            self._refuse_unknown(parts, message, topic)
            return
        if not device.enabled:
            self._reject(Rejection(protocol.DEVICE_DISABLED, "device is disabled"), topic, parts.device_id)
            return
        self.metrics.accept(parts.suffix)
        self._record(parts.device_id, device, message, info)

    def _refuse_unknown(self, parts: protocol.DeviceTopic, message: protocol.Message, topic: str) -> None:
        if isinstance(message, Handshake) and self.link is not None:
            self.link.publish_json(
                protocol.device_topic(parts.station_id, parts.device_id, "handshake/ack"),
                {"status": "unknown_device"},
            )
        self._reject(
            Rejection(protocol.UNKNOWN_DEVICE, "device is not registered in this station"),
            topic,
            parts.device_id,
        )

    def _lookup_unknown(
        self, parts: protocol.DeviceTopic, message: protocol.Message, topic: str, info: MessageInfo
    ) -> None:
        now = time.monotonic()
        waiting = self._waiting.get(parts.device_id)
        if waiting is not None and self._waiting_count < MAX_WAITING:
            if info.ack is not None:
                info.ack.hold()
            waiting.append((parts, message, topic, info))
            self._waiting_count += 1
            return
        if self._not_found.get(parts.device_id, 0.0) > now or len(self._lookups) >= MAX_LOOKUPS:
            self._refuse_unknown(parts, message, topic)
            return
        if info.ack is not None:
            info.ack.hold()  # not acknowledged before we know what to do with it
        self._waiting[parts.device_id] = []
        task = asyncio.get_running_loop().create_task(self._resolve(parts, message, topic, info))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _resolve(
        self, parts: protocol.DeviceTopic, message: protocol.Message, topic: str, info: MessageInfo
    ) -> None:
        later: list[tuple[protocol.DeviceTopic, protocol.Message, str, MessageInfo]] = []
        try:
            await self._resolve_and_record(parts, message, topic, info)
        finally:
            if info.ack is not None:
                info.ack.release()
            later = self._waiting.pop(parts.device_id, [])
            self._waiting_count -= len(later)
        # The device is known now (or known not to exist): its waiting messages take the normal path.
        for w_parts, w_message, w_topic, w_info in later:
            try:
                if parts.device_id in self.known:
                    device = self.known[parts.device_id]
                    if device.station_id != w_parts.station_id:
                        self._refuse_unknown(w_parts, w_message, w_topic)
                    elif not device.enabled:
                        disabled = Rejection(protocol.DEVICE_DISABLED, "device is disabled")
                        self._reject(disabled, w_topic, parts.device_id)
                    else:
                        self.metrics.accept(w_parts.suffix)
                        self._record(parts.device_id, device, w_message, w_info)
                else:
                    self._refuse_unknown(w_parts, w_message, w_topic)
            finally:
                if w_info.ack is not None:
                    w_info.ack.release()

    async def _resolve_and_record(
        self, parts: protocol.DeviceTopic, message: protocol.Message, topic: str, info: MessageInfo
    ) -> None:
        try:
            async with self.db.session() as session:
                row = (
                    await session.execute(
                        select(Device.station_id, Device.type, Device.status, Device.enabled).where(
                            Device.id == parts.device_id
                        )
                    )
                ).first()
        except Exception:
            log.exception("looking up device %s failed", parts.device_id)
            row = None
        if row is None:
            if len(self._not_found) >= 10_000:
                self._not_found.clear()
            self._not_found[parts.device_id] = time.monotonic() + UNKNOWN_DEVICE_RECHECK_SECONDS
            self._refuse_unknown(parts, message, topic)
            return
        device = self.known.setdefault(
            parts.device_id, KnownDevice(row.station_id, row.type, row.status, enabled=bool(row.enabled))
        )
        if device.station_id != parts.station_id:
            self._refuse_unknown(parts, message, topic)
            return
        if not device.enabled:
            self._reject(Rejection(protocol.DEVICE_DISABLED, "device is disabled"), topic, parts.device_id)
            return
        self.metrics.accept(parts.suffix)
        self._record(parts.device_id, device, message, info)

    def _reject(self, rejection: Rejection, topic: str, device_id: str | None) -> None:
        self.metrics.reject(rejection.reason)
        self._bad_input_log.warning(
            (device_id or topic, rejection.reason),
            time.time(),
            "dropped MQTT message on %s: %s (%s)",
            topic[:200],
            rejection.reason,
            rejection.detail,
        )

    def _record(
        self, device_id: str, device: KnownDevice, message: protocol.Message, info: MessageInfo
    ) -> None:
        pending = self._pending
        now = time.time()
        if isinstance(message, Heartbeat) and not message.online:
            self._set_status(device_id, device, "offline")
            self._wake.set()
            return
        device.last_seen = now
        pending.seen.add(device_id)
        if device.status != "online":
            self._set_status(device_id, device, "online")
        if isinstance(message, StateReport):
            pending.state.setdefault(device_id, {}).update(message.state)
            pending.state_ts[device_id] = message.ts or datetime.fromtimestamp(now, UTC)
            if self.ingest is not None:
                # Numeric keys become telemetry channels (bool is not a number).
                numbers = {
                    k: float(v)
                    for k, v in message.state.items()
                    if type(v) is int or (type(v) is float and math.isfinite(v))
                }
                if numbers:
                    self.ingest.submit(
                        kind="device",
                        station_id=device.station_id,
                        source_id=device_id,
                        values=numbers,
                        ts_us=int(message.ts.timestamp() * 1_000_000) if message.ts else None,
                        token=info.ack,
                    )
        elif isinstance(message, DeviceEventMsg):
            if len(pending.events) >= MAX_PENDING_EVENTS:
                pending.events.pop(0)
                self.dropped_events += 1
            pending.events.append(
                {
                    "device_id": device_id,
                    "ts": datetime.fromtimestamp(now, UTC),
                    "kind": message.kind,
                    "data": message.data,
                }
            )
        elif isinstance(message, Handshake):
            fields: dict[str, Any] = {}
            if message.firmware_version:
                fields["firmware_version"] = message.firmware_version
            if message.chip:
                fields["chip"] = message.chip
            pending.fields.setdefault(device_id, {}).update(fields)
            pending.online_again.add(device_id)  # a (re)booted device gets its queued commands
            if self.link is not None:
                self.link.publish_json(
                    protocol.device_topic(device.station_id, device_id, "handshake/ack"), {"status": "ok"}
                )
        elif isinstance(message, CommandAck):
            pending.acks.append((device_id, message))
        self._wake.set()

    def _set_status(self, device_id: str, device: KnownDevice, status: str) -> None:
        if device.status == status:
            return
        device.status = status
        self._pending.status[device_id] = status
        if status == "online":
            self._pending.online_again.add(device_id)
        self._update_online_gauge()

    def _update_online_gauge(self) -> None:
        self.metrics.devices_online.set(sum(1 for d in self.known.values() if d.status == "online"))

    # --- batched writes --------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush loop and watchdog, until cancelled (a last flush runs on the way out)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._flush_loop())
            tasks.create_task(self._watch_loop())

    async def _flush_loop(self) -> None:
        interval = self.settings.device_flush_interval_ms / 1000.0
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(interval)  # let a burst coalesce into one transaction
                self._wake.clear()
                try:
                    await self.flush()
                except Exception:
                    log.exception("device flush failed; retrying")
                    await asyncio.sleep(1.0)
                    self._wake.set()
        except asyncio.CancelledError:
            await asyncio.shield(self.flush())
            raise

    async def flush(self) -> None:
        async with self._flush_lock:
            pending, self._pending = self._pending, Pending()
            if pending.empty():
                return
            try:
                async with self.db.writer() as session:
                    await self._write(session, pending)
                self.metrics.device_flushes.inc()
            except Exception:
                self._merge_back(pending)
                raise
        for device_id in pending.online_again:
            await self.send_queued(device_id)

    def _merge_back(self, failed: Pending) -> None:
        """Keep what could not be written so the next flush tries again (newer values win)."""
        fresh = self._pending
        for device_id, state in failed.state.items():
            fresh.state[device_id] = {**state, **fresh.state.get(device_id, {})}
            fresh.state_ts.setdefault(device_id, failed.state_ts[device_id])
        for device_id, fields in failed.fields.items():
            fresh.fields[device_id] = {**fields, **fresh.fields.get(device_id, {})}
        for device_id, status in failed.status.items():
            fresh.status.setdefault(device_id, status)
        fresh.seen |= failed.seen
        fresh.events[:0] = failed.events[-MAX_PENDING_EVENTS:]
        fresh.acks[:0] = failed.acks
        fresh.online_again |= failed.online_again

    async def _write(self, session: AsyncSession, pending: Pending) -> None:
        now = time.time()
        touched = (
            set(pending.state)
            | set(pending.fields)
            | set(pending.status)
            | {
                d
                for d in pending.seen
                if (k := self.known.get(d)) is not None and now - k.persisted_seen >= self.seen_write_interval
            }
        )
        touched &= set(self.known)
        current: dict[str, dict[str, Any]] = {}
        if pending.state:
            query = select(Device.id, Device.state).where(Device.id.in_(in_list(pending.state)))
            rows = await session.execute(query)
            current = {device_id: dict(state or {}) for device_id, state in rows}
        announced = pending.status
        if self.shared:
            # Every device seen is (still) online as far as this worker knows; the row decides whether
            # that is news. Explicit changes (a will, a broker report) win over "seen".
            wanted = {d: "online" for d in pending.seen if d in self.known} | pending.status
            announced = await self._claim_status(session, wanted)
        updates = []
        for device_id in touched:
            known = self.known[device_id]
            row: dict[str, Any] = {"id": device_id}
            if known.last_seen:
                row["last_seen"] = datetime.fromtimestamp(known.last_seen, UTC)
                known.persisted_seen = known.last_seen
            if device_id in pending.status and not self.shared:
                row["status"] = pending.status[device_id]
            if device_id in pending.state and device_id in current:
                row["state"] = {**current[device_id], **pending.state[device_id]}
            if device_id in pending.fields:
                row.update(pending.fields[device_id])
                row["updated_at"] = datetime.now(UTC)
            updates.append(row)
        # Rows differ in which columns they set; group them so each group is one executemany.
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in updates:
            groups.setdefault(tuple(sorted(row)), []).append(row)
        for rows_of_shape in groups.values():
            await session.execute(update(Device), rows_of_shape)
        if pending.events:
            await session.execute(insert(DeviceEvent), pending.events)
        for device_id, ack in pending.acks:
            await self._apply_ack(session, device_id, ack)

        self._emit_flushed(session, pending, set(current), announced)

    async def _claim_status(self, session: AsyncSession, wanted: dict[str, str]) -> dict[str, str]:
        """Set each device's status where it differs; return only the rows this UPDATE changed, so of
        several workers exactly one announces a transition."""
        by_status: dict[str, list[str]] = {}
        for device_id, status in wanted.items():
            by_status.setdefault(status, []).append(device_id)
        changed: dict[str, str] = {}
        for status, ids in by_status.items():
            result = await session.execute(
                update(Device)
                .where(Device.id.in_(in_list(ids)), Device.status != status)
                .values(status=status)
                .returning(Device.id)
                .execution_options(synchronize_session=False)
            )
            for device_id in result.scalars():
                changed[device_id] = status
        for device_id, status in changed.items():
            if (known := self.known.get(device_id)) is not None and known.status != status:
                known.status = status
                if status == "online":
                    self._pending.online_again.add(device_id)
        if changed:
            self._update_online_gauge()
        return changed

    def _emit_flushed(
        self, session: AsyncSession, pending: Pending, existing: set[str], announced: dict[str, str]
    ) -> None:
        """Bus events for what this flush wrote; published only once it has committed."""

        def station_of(device_id: str) -> str | None:
            owner = self.known.get(device_id)
            return owner.station_id if owner is not None else None

        for device_id, status in announced.items():
            if (sid := station_of(device_id)) is not None:
                emit(session, f"device.{status}", {"device_id": device_id}, sid)
        for device_id, state in pending.state.items():
            if (sid := station_of(device_id)) is not None and device_id in existing:
                ts = pending.state_ts[device_id].isoformat()
                emit(session, "device.state_changed", {"device_id": device_id, "state": state, "ts": ts}, sid)
        for ev in pending.events:
            if (sid := station_of(ev["device_id"])) is not None:
                data = {
                    "device_id": ev["device_id"],
                    "kind": ev["kind"],
                    "data": ev["data"],
                    "ts": ev["ts"].isoformat(),
                }
                emit(session, "device.event", data, sid)
        for device_id, fields in pending.fields.items():
            if (sid := station_of(device_id)) is not None and fields:
                emit(session, "device.updated", {"device_id": device_id, "changed": sorted(fields)}, sid)

    async def _apply_ack(self, session: AsyncSession, device_id: str, ack: CommandAck) -> None:
        now = datetime.now(UTC)
        result = await session.execute(
            update(Command)
            .where(
                Command.request_id == ack.request_id,
                Command.device_id == device_id,
                Command.status.in_(_ACK_FROM[ack.status]),
            )
            .values(status=ack.status, error=ack.error, acked_at=now, updated_at=now)
            .returning(Command.action)
        )
        action = result.scalar()
        if action is None:
            self._bad_input_log.warning(
                (device_id, "ack"),
                time.time(),
                "ignored ack %s for unknown or finished command %s of %s",
                ack.status,
                ack.request_id,
                device_id,
            )
            return
        known = self.known.get(device_id)
        emit(
            session,
            "device.command_acked",
            {
                "device_id": device_id,
                "request_id": ack.request_id,
                "action": action,
                "status": ack.status,
                "error": ack.error,
            },
            known.station_id if known else None,
        )

    # --- presence and timeouts ---------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_check_interval_seconds)
            try:
                await self.check_presence()
                await self.expire_commands()
            except Exception:
                log.exception("presence check failed")

    def broker_presence(self, device_id: str, online: bool) -> bool:
        """The broker reported that the device's client connected or disconnected (EMQX webhook). Same path
        as MQTT presence: the status is written by the next flush, which publishes `device.online` /
        `device.offline` and sends queued commands. False if the device is not known here."""
        device = self.known.get(device_id)
        if device is None:
            return False
        if online:
            # A fresh connection counts as a sign of life, so the watchdog gives it a full timeout.
            device.last_seen = time.time()
            self._pending.seen.add(device_id)
        self._set_status(device_id, device, "online" if online else "offline")
        self._wake.set()
        return True

    async def check_presence(self) -> None:
        if self.shared:
            if self.is_leader():
                await self._check_presence_shared()
            return
        cutoff = time.time() - self.settings.heartbeat_timeout_seconds
        went_silent = [d for d, k in self.known.items() if k.status == "online" and k.last_seen < cutoff]
        for device_id in went_silent:
            self._set_status(device_id, self.known[device_id], "offline")
        if went_silent:
            log.info(
                "%d device(s) silent for %.0fs, now offline",
                len(went_silent),
                self.settings.heartbeat_timeout_seconds,
            )
            await self.flush()

    async def _check_presence_shared(self) -> None:
        """The leader's watchdog: devices whose flushed `last_seen` is older than the timeout go offline
        (the guarded UPDATE also keeps a device that just spoke to another worker online)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.heartbeat_timeout_seconds)
        async with self.db.session() as session:
            result = await session.execute(
                update(Device)
                .where(Device.status == "online", or_(Device.last_seen < cutoff, Device.last_seen.is_(None)))
                .values(status="offline")
                .returning(Device.id, Device.station_id)
                .execution_options(synchronize_session=False)
            )
            silent = result.all()
            for device_id, station_id in silent:
                emit(session, "device.offline", {"device_id": device_id}, station_id)
                if (known := self.known.get(device_id)) is not None:
                    known.status = "offline"
        if silent:
            self._update_online_gauge()
            log.info(
                "%d device(s) silent for %.0fs, now offline",
                len(silent),
                self.settings.heartbeat_timeout_seconds,
            )

    async def follow_others(self) -> None:
        """Several workers: learn the status changes other workers announced, so this one's view (who
        gets commands at once) stays right. Runs until cancelled."""
        sub = self.bus.subscribe(TypeFilter(["device.online", "device.offline"]), maxsize=10_000)
        try:
            async for item in sub:
                if isinstance(item, Gap) or item.origin is None:
                    continue
                known = self.known.get(str(item.data.get("device_id")))
                if known is not None:
                    known.status = item.type.removeprefix("device.")
                    self._update_online_gauge()
        finally:
            sub.close()

    async def expire_commands(self) -> None:
        now = datetime.now(UTC)
        ack_cutoff = now - timedelta(seconds=self.settings.command_ack_timeout_seconds)
        apply_cutoff = now - timedelta(seconds=self.settings.command_apply_timeout_seconds)
        async with self.db.session() as session:
            result = await session.execute(
                update(Command)
                .where(
                    ((Command.status == "queued") & (Command.expires_at < now))
                    | ((Command.status == "sent") & (Command.sent_at < ack_cutoff))
                    | ((Command.status == "accepted") & (Command.acked_at < apply_cutoff))
                )
                .values(status="timeout", updated_at=now, error="no answer from the device in time")
                .returning(Command.request_id, Command.device_id, Command.action)
            )
            for request_id, device_id, action in result.all():
                known = self.known.get(device_id)
                emit(
                    session,
                    "device.command_acked",
                    {
                        "device_id": device_id,
                        "request_id": request_id,
                        "action": action,
                        "status": "timeout",
                        "error": "no answer from the device in time",
                    },
                    known.station_id if known else None,
                )

    # --- commands out ------------------------------------------------------------------------------

    async def submit_command(
        self,
        device_id: str,
        action: str,
        params: dict[str, Any],
        actor: str,
        ip: str | None,
        visible_station: str | None = None,
    ) -> Command:
        """Validate, store (queued), then send now if the device is online; otherwise it waits."""
        async with self.db.session() as session:
            device = await get_device(session, device_id)
            if not device.enabled:
                raise DeviceDisabled(f"Device {device_id!r} is disabled; enable it to send commands.")
            validate_command(await get_type(session, device.type), action, params)
            now = datetime.now(UTC)
            cmd = Command(
                request_id=uuid.uuid4().hex,
                device_id=device_id,
                action=action,
                params=params,
                status="queued",
                created_by=actor,
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(seconds=self.settings.command_ttl_seconds),
            )
            session.add(cmd)
            audit.record(
                session,
                actor=actor,
                action="device.command",
                target=f"device:{device_id}",
                summary=f"{action} {sorted(params)}",
                ip=ip,
                station_id=device.station_id,
            )
        known = self.known.get(device_id)
        if known is not None and known.status == "online":
            await self._send(cmd, known.station_id)
        return cmd

    async def send_queued(self, device_id: str) -> int:
        known = self.known.get(device_id)
        if known is None or self.link is None or not self.link.connected:
            return 0
        async with self.db.session() as session:
            queued = (
                await session.scalars(
                    select(Command)
                    .where(
                        Command.device_id == device_id,
                        Command.status == "queued",
                        Command.expires_at >= datetime.now(UTC),
                    )
                    .order_by(Command.created_at)
                )
            ).all()
        sent = 0
        for cmd in queued:
            sent += await self._send(cmd, known.station_id)
        return sent

    async def _send(self, cmd: Command, station_id: str) -> int:
        if self.link is None or not self.link.connected:
            return 0
        params = dict(cmd.params or {})
        prepare = self.before_send.get(cmd.action)
        if prepare is not None:
            params = prepare(params)
        payload = {"request_id": cmd.request_id, "action": cmd.action, **params}
        now = datetime.now(UTC)
        # Claim queued → sent before publishing: a command submitted just as its device comes online (two
        # senders at once) goes out exactly once, and an ack that beats the status update is not lost.
        async with self.db.session() as session:
            claimed = await session.execute(
                update(Command)
                .where(Command.request_id == cmd.request_id, Command.status == "queued")
                .values(status="sent", sent_at=now, updated_at=now)
                .returning(Command.request_id)
            )
            if claimed.scalar() is None:
                return 0  # someone else sent it (or it expired meanwhile)
        if not self.link.publish_json(protocol.device_topic(station_id, cmd.device_id, "command"), payload):
            # Broker down: back to the queue; it goes out when the link is back.
            async with self.db.session() as session:
                await session.execute(
                    update(Command)
                    .where(Command.request_id == cmd.request_id, Command.status == "sent")
                    .values(status="queued", sent_at=None, updated_at=datetime.now(UTC))
                )
            return 0
        cmd.status, cmd.sent_at = "sent", now
        self.bus.emit(
            "device.command_sent",
            {"device_id": cmd.device_id, "request_id": cmd.request_id, "action": cmd.action},
            station_id,
        )
        return 1

    def _on_link_change(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        if connected:
            online = [d for d, k in self.known.items() if k.status == "online"]
            if online:
                # Keep a reference: the loop holds tasks only weakly.
                task = asyncio.get_running_loop().create_task(self._send_all_queued(online))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _send_all_queued(self, device_ids: list[str]) -> None:
        for device_id in device_ids:
            try:
                await self.send_queued(device_id)
            except Exception:
                log.exception("sending queued commands to %s failed", device_id)
