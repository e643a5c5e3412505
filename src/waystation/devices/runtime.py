"""The live side of devices: MQTT messages in, batched writes, presence, and command dispatch.

Read top to bottom: `on_message` (MQTT thread → loop) validates and records into small coalescing
buffers; `flush` writes everything pending in one transaction every `device_flush_interval_ms` and
publishes the bus events after the commit; `watch` marks silent devices offline and times out commands.
A directory of known devices (id → station, type) is kept in memory so a message costs no query.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database, emit
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
from waystation.logs import RateLimitedLog
from waystation.mqtt.link import MqttLink
from waystation.mqtt.topics import MessageInfo
from waystation.status.metrics import Metrics
from waystation.telemetry.ingest import IngestPipeline

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 10_000
MAX_LOOKUPS = 100  # concurrent database look-ups of unknown device ids
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
        self._not_found: dict[str, float] = {}

    # --- set-up ----------------------------------------------------------------------------------

    async def load(self) -> None:
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Device.id, Device.station_id, Device.type, Device.status, Device.last_seen)
                )
            ).all()
        now = time.time()
        for device_id, station_id, type_id, status, last_seen in rows:
            seen = last_seen.timestamp() if last_seen else 0.0
            # A device that was online when we stopped gets a full timeout to speak up again.
            self.known[device_id] = KnownDevice(
                station_id,
                type_id,
                status,
                last_seen=max(seen, now) if status == "online" else seen,
                persisted_seen=seen,
            )
        self._update_online_gauge()

    def attach(self, link: MqttLink) -> None:
        self.link = link
        link.subscribe(f"{protocol.TOPIC_ROOT}/#", self.on_message, qos=1)
        link.add_connection_listener(self._on_link_change)

    def device_added(self, device_id: str, station_id: str, type_id: str) -> None:
        self.known[device_id] = KnownDevice(station_id, type_id, "unknown")
        self._not_found.pop(device_id, None)

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
        if self._not_found.get(parts.device_id, 0.0) > now or len(self._lookups) >= MAX_LOOKUPS:
            self._refuse_unknown(parts, message, topic)
            return
        if info.ack is not None:
            info.ack.hold()  # not acknowledged before we know what to do with it
        task = asyncio.get_running_loop().create_task(self._resolve(parts, message, topic, info))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _resolve(
        self, parts: protocol.DeviceTopic, message: protocol.Message, topic: str, info: MessageInfo
    ) -> None:
        try:
            await self._resolve_and_record(parts, message, topic, info)
        finally:
            if info.ack is not None:
                info.ack.release()

    async def _resolve_and_record(
        self, parts: protocol.DeviceTopic, message: protocol.Message, topic: str, info: MessageInfo
    ) -> None:
        try:
            async with self.db.session() as session:
                row = (
                    await session.execute(
                        select(Device.station_id, Device.type, Device.status).where(
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
        device = self.known.setdefault(parts.device_id, KnownDevice(row.station_id, row.type, row.status))
        if device.station_id != parts.station_id:
            self._refuse_unknown(parts, message, topic)
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
                async with self.db.session() as session:
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
                if (k := self.known.get(d)) is not None and now - k.persisted_seen >= LAST_SEEN_WRITE_INTERVAL
            }
        )
        touched &= set(self.known)
        current: dict[str, dict[str, Any]] = {}
        if pending.state:
            rows = await session.execute(select(Device.id, Device.state).where(Device.id.in_(pending.state)))
            current = {device_id: dict(state or {}) for device_id, state in rows}
        updates = []
        for device_id in touched:
            known = self.known[device_id]
            row: dict[str, Any] = {"id": device_id}
            if known.last_seen:
                row["last_seen"] = datetime.fromtimestamp(known.last_seen, UTC)
                known.persisted_seen = known.last_seen
            if device_id in pending.status:
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

        self._emit_flushed(session, pending, set(current))

    def _emit_flushed(self, session: AsyncSession, pending: Pending, existing: set[str]) -> None:
        """Bus events for what this flush wrote; published only once it has committed."""

        def station_of(device_id: str) -> str | None:
            owner = self.known.get(device_id)
            return owner.station_id if owner is not None else None

        for device_id, status in pending.status.items():
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

    async def check_presence(self) -> None:
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
        if self.link is None:
            return 0
        payload = {"request_id": cmd.request_id, "action": cmd.action, **(cmd.params or {})}
        if not self.link.publish_json(protocol.device_topic(station_id, cmd.device_id, "command"), payload):
            return 0  # broker down: stays queued and goes out when the link is back
        now = datetime.now(UTC)
        async with self.db.session() as session:
            # Only queued → sent: a fast device may already have acknowledged it.
            result = await session.execute(
                update(Command)
                .where(Command.request_id == cmd.request_id, Command.status == "queued")
                .values(status="sent", sent_at=now, updated_at=now)
                .returning(Command.request_id)
            )
            if result.scalar() is not None:
                cmd.status, cmd.sent_at = "sent", now
            emit(
                session,
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
