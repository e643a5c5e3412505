"""The live side of flows: subscriptions that follow the database, validation, and batched processing.

`reload()` reads the enabled flows and subscribes or unsubscribes only the difference, on the station's
link or on a link per extra MQTT server. A `flow.changed` bus event triggers it within a second; a
periodic reload is the safety net. Accepted messages are processed in batches: one
`UPDATE flows … RETURNING last_msg_id` per flow per batch hands out message ids atomically (also with
several workers), then data records (STORE_DB) or durable deliveries (POST_ENDPOINT) are written in
the same transaction, and only then are the QoS 1 messages acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.bus import Bus, TypeFilter
from waystation.config import MqttEndpoint, Settings
from waystation.db import Database
from waystation.flows.models import DataRecord, Flow, MqttServer
from waystation.flows.validation import Validator, compile_validator
from waystation.logs import RateLimitedLog
from waystation.mqtt.link import MqttLink
from waystation.mqtt.topics import AckToken, Handler, MessageInfo
from waystation.secrets_box import SecretBox
from waystation.telemetry.ingest import IngestPipeline
from waystation.webhooks.delivery import DeliveryDispatcher, new_delivery

log = logging.getLogger(__name__)

MAX_PENDING = 20_000  # accepted messages waiting for their batch; beyond this the station link pauses


@dataclass
class ActiveFlow:
    id: int
    code: str
    topic: str
    server_id: int | None
    action: str
    endpoint_url: str | None
    version: int
    station_id: str | None
    validator: Validator


@dataclass
class Accepted:
    code: str
    topic: str
    payload: Any
    received_at: datetime
    token: AckToken | None


@dataclass
class Counters:
    rejected: int = 0
    last_error: str | None = None


@dataclass
class Subscription:
    link_key: int | None
    topic: str
    handler: Handler


@dataclass
class Pending:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: dict[str, Counters] = field(default_factory=dict)


class FlowRegistry:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        station_link: MqttLink,
        ingest: IngestPipeline,
        dispatcher: DeliveryDispatcher,
        box: SecretBox,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.station_link = station_link
        self.ingest = ingest
        self.dispatcher = dispatcher
        self.box = box
        self.flows: dict[str, ActiveFlow] = {}
        self._subs: dict[str, Subscription] = {}
        self._links: dict[int, MqttLink] = {}
        self._link_specs: dict[int, tuple[Any, ...]] = {}
        self._pending = Pending()
        self._wake = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._bad_log = RateLimitedLog(log, 60.0)
        self.reloads = 0
        # Several workers (docs/scaling.md): each its own session on other servers, one shared group.
        self.client_suffix = ""
        self.shared_group: str | None = None

    # --- subscriptions follow the database -------------------------------------------------------------

    async def reload(self) -> None:
        async with self._reload_lock:
            async with self.db.session() as session:
                rows = (await session.scalars(select(Flow).where(Flow.enabled.is_(True)))).all()
                servers = {s.id: s for s in (await session.scalars(select(MqttServer))).all()}
            await self._sync_links(servers, {f.mqtt_server_id for f in rows if f.mqtt_server_id is not None})
            wanted: dict[str, ActiveFlow] = {}
            for row in rows:
                if row.mqtt_server_id is not None and row.mqtt_server_id not in self._links:
                    continue  # its server is disabled or gone
                current = self.flows.get(row.code)
                if current is not None and current.version == row.version and current.id == row.id:
                    wanted[row.code] = current
                    continue
                try:
                    validator = compile_validator(row.payload_schema or {})
                except Exception:  # stored before validation existed, or edited by hand
                    log.exception("flow %s has an unusable payload_schema; skipped", row.code)
                    continue
                wanted[row.code] = ActiveFlow(
                    row.id,
                    row.code,
                    row.topic,
                    row.mqtt_server_id,
                    row.action,
                    row.endpoint_url,
                    row.version,
                    row.station_id,
                    validator,
                )
            self._apply_subscriptions(wanted)
            self.flows = wanted
            self.reloads += 1

    def _apply_subscriptions(self, wanted: dict[str, ActiveFlow]) -> None:
        for code, sub in list(self._subs.items()):
            flow = wanted.get(code)
            if flow is None or flow.topic != sub.topic or flow.server_id != sub.link_key:
                self._link(sub.link_key).unsubscribe(sub.topic, sub.handler)
                del self._subs[code]
        for code, flow in wanted.items():
            if code not in self._subs:
                handler = self._make_handler(code)
                self._link(flow.server_id).subscribe(flow.topic, handler, qos=1)
                self._subs[code] = Subscription(flow.server_id, flow.topic, handler)

    def _link(self, key: int | None) -> MqttLink:
        return self.station_link if key is None else self._links[key]

    async def _sync_links(self, servers: dict[int, MqttServer], used: set[int]) -> None:
        for server_id in list(self._links):
            server = servers.get(server_id)
            spec = _spec(server) if server is not None else None
            if (
                server_id not in used
                or server is None
                or not server.enabled
                or spec != self._link_specs[server_id]
            ):
                link = self._links.pop(server_id)
                self._link_specs.pop(server_id)
                for code, sub in list(self._subs.items()):
                    if sub.link_key == server_id:
                        del self._subs[code]
                await link.stop()
        for server_id in used:
            server = servers.get(server_id)
            if server is None or not server.enabled or server_id in self._links:
                continue
            password = self.box.open(server.password_sealed) if server.password_sealed else None
            endpoint = MqttEndpoint(False, server.host, server.port, server.tls, server.username, password)
            # Same guarantee as the station's own broker: persistent session, acks only after commit.
            link = MqttLink(
                endpoint,
                client_id=(server.client_id or f"waystation-flows-{server.id}") + self.client_suffix,
                persistent_session=True,
                manual_ack=True,
                session_expiry=self.settings.mqtt_session_expiry_seconds,
                shared_group=self.shared_group,
            )
            link.start()
            self._links[server_id] = link
            self._link_specs[server_id] = _spec(server)

    def _make_handler(self, code: str) -> Handler:
        def handle(topic: str, payload: bytes, info: MessageInfo) -> None:
            self._on_message(code, topic, payload, info)

        return handle

    # --- messages in ----------------------------------------------------------------------------------

    def _on_message(self, code: str, topic: str, payload: bytes, info: MessageInfo) -> None:
        flow = self.flows.get(code)
        if flow is None:
            return
        reason: str | None
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data, reason = None, "payload is not valid JSON"
        else:
            reason = flow.validator(data)
        if reason is not None:
            counters = self._pending.rejected.setdefault(code, Counters())
            counters.rejected += 1
            counters.last_error = reason
            self._bad_log.warning(
                (code, reason), time.time(), "flow %s rejected a message on %s: %s", code, topic[:200], reason
            )
            self._wake.set()
            return
        if info.ack is not None:
            info.ack.hold()
        self._pending.accepted.append(Accepted(code, topic, data, datetime.now(UTC), info.ack))
        if len(self._pending.accepted) >= MAX_PENDING and not self.station_link.paused:
            self.station_link.pause()
        self._wake.set()

    # --- batches ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.reload()
        sub = self.bus.subscribe(TypeFilter(["flow.changed"]), maxsize=100)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._batch_loop())
                tasks.create_task(self._reload_on_change(sub))
                tasks.create_task(self._periodic_reload())
        finally:
            sub.close()
            for link in self._links.values():
                await link.stop()

    async def _reload_on_change(self, sub: Any) -> None:
        async for _event in sub:
            await asyncio.sleep(0.05)  # coalesce a burst of edits into one reload
            while sub.get_nowait() is not None:
                pass
            try:
                await self.reload()
            except Exception:
                log.exception("flow reload failed")

    async def _periodic_reload(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flows_reload_interval_seconds)
            try:
                await self.reload()
            except Exception:
                log.exception("periodic flow reload failed")

    async def _batch_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(self.settings.flow_batch_ms / 1000.0)
                self._wake.clear()
                await self.flush()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
            raise

    async def flush(self) -> None:
        pending, self._pending = self._pending, Pending()
        if not pending.accepted and not pending.rejected:
            return
        delay = 0.5
        while True:
            try:
                async with self.db.session() as session:
                    numbers, wrote_deliveries = await self._write(session, pending)
                break
            except Exception:
                log.exception("flow batch write failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        for code, values, token in numbers:
            flow = self.flows.get(code)
            self.ingest.submit(
                kind="flow",
                station_id=flow.station_id if flow else None,
                source_id=code,
                values=values,
                ts_us=None,
                token=token,
            )
        for item in pending.accepted:
            if item.token is not None:
                item.token.release()
        if self.station_link.paused and self.ingest.queue_rows < self.settings.ingest_max_queue_rows // 2:
            self.station_link.resume()
        if wrote_deliveries:
            self.dispatcher.wake()

    async def _write(
        self,
        session: AsyncSession,
        pending: Pending,
    ) -> tuple[list[tuple[str, dict[str, float], AckToken | None]], bool]:
        by_flow: dict[str, list[Accepted]] = {}
        for item in pending.accepted:
            by_flow.setdefault(item.code, []).append(item)
        records: list[dict[str, Any]] = []
        numbers: list[tuple[str, dict[str, float], AckToken | None]] = []
        wrote_deliveries = False
        for code, items in by_flow.items():
            flow = self.flows.get(code)
            if flow is None:
                continue  # deleted or disabled meanwhile: its messages are acknowledged and dropped
            # One statement hands out this batch's message ids atomically, whichever worker runs it.
            last = (
                await session.execute(
                    update(Flow)
                    .where(Flow.id == flow.id)
                    .values(last_msg_id=Flow.last_msg_id + len(items), accepted=Flow.accepted + len(items))
                    .returning(Flow.last_msg_id)
                )
            ).scalar_one()
            first = last - len(items) + 1
            for offset, item in enumerate(items):
                msg_id = first + offset
                if flow.action == "STORE_DB":
                    fields = item.payload if isinstance(item.payload, dict) else {"value": item.payload}
                    records.extend(
                        {
                            "flow_id": flow.id,
                            "msg_id": msg_id,
                            "field": str(k)[:128],
                            "value": v,
                            "received_at": item.received_at,
                        }
                        for k, v in fields.items()
                    )
                    nums = {
                        str(k): float(v)
                        for k, v in fields.items()
                        if type(v) is int or (type(v) is float and math.isfinite(v))
                    }
                    if nums:
                        numbers.append((code, nums, item.token))
                elif flow.endpoint_url:
                    body = orjson.dumps(
                        {"flow": code, "msg_id": msg_id, "topic": item.topic, "payload": item.payload}
                    ).decode()
                    new_delivery(
                        session,
                        kind="flow",
                        source=code,
                        ordering_key=f"flow:{code}",
                        url=flow.endpoint_url,
                        body=body,
                        max_attempts=self.settings.delivery_max_attempts,
                    )
                    wrote_deliveries = True
        if records:
            await session.execute(insert(DataRecord), records)
        for code, counters in pending.rejected.items():
            flow = self.flows.get(code)
            if flow is not None:
                await session.execute(
                    update(Flow)
                    .where(Flow.id == flow.id)
                    .values(rejected=Flow.rejected + counters.rejected, last_error=counters.last_error)
                )
        return numbers, wrote_deliveries


def _spec(server: MqttServer) -> tuple[Any, ...]:
    return (server.host, server.port, server.tls, server.username, server.password_sealed, server.client_id)
