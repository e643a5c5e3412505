"""Read models built in the backend, so every client (UI, CLI, MCP, scripts) shows the same picture:
the home overview, the system's health and a device's workspace.

Each function reads what it needs in one session and returns plain JSON-able dicts; callers decide who
may see which stations.
"""

from __future__ import annotations

import os
import platform
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from waystation import __version__
from waystation.broker.models import BrokerOutbox
from waystation.devices.models import Command, Device, DeviceEvent
from waystation.devices.service import command_out, device_out, event_out
from waystation.ota.models import OtaJob, OtaJobDevice
from waystation.rules.models import Alert
from waystation.rules.service import alert_out
from waystation.telemetry.ingest import from_us
from waystation.telemetry.models import Channel
from waystation.webhooks.models import Delivery

if TYPE_CHECKING:
    from waystation.context import AppContext

RECENT_EVENTS = 10
ACTIVE_ALERTS_SHOWN = 5
PENDING_COMMAND_STATES = ("queued", "sent", "accepted")
OTA_ACTIVE_JOB_STATES = ("running", "paused")


# --- link states ----------------------------------------------------------------------------------


def link_states(ctx: AppContext) -> dict[str, Any]:
    """Broker, cloud and BLE link state in a few words each (details live on their own status routes)."""
    link = ctx.mqtt
    sync = ctx.broker_sync
    broker: dict[str, Any] = {
        "connected": bool(link and link.connected),
        "last_error": link.last_error if link else None,
        "sync_mode": sync.mode if sync else None,
        "sync_reachable": sync.broker_ok if sync else None,
    }
    cloud_link = getattr(ctx, "cloud", None)
    cloud: dict[str, Any] = {"state": "disabled"}
    if cloud_link is not None:
        full = cloud_link.status()
        cloud = {key: full.get(key) for key in ("state", "claimed", "last_error", "queue_depth")}
    manager = getattr(ctx, "provisioning_manager", None)
    ble: dict[str, Any] = {"state": "disabled"}
    if manager is not None:
        full = manager.status()
        ble = {key: full[key] for key in ("state", "scanning", "clients", "candidates") if key in full}
    return {"broker": broker, "cloud": cloud, "ble": ble}


# --- home ------------------------------------------------------------------------------------------


def _count_devices(ctx: AppContext, stations: set[str] | None) -> dict[str, int]:
    counts = {"total": 0, "online": 0, "offline": 0, "unknown": 0, "disabled": 0}
    known = ctx.devices.known.values() if ctx.devices else ()
    for device in known:
        if stations is not None and device.station_id not in stations:
            continue
        counts["total"] += 1
        if not device.enabled:
            counts["disabled"] += 1
        counts[device.status if device.status in counts else "unknown"] += 1
    return counts


async def home(session: AsyncSession, ctx: AppContext, stations: set[str] | None) -> dict[str, Any]:
    """The home screen: devices by status, active alerts, the latest device events, link states.
    `stations` limits everything to those stations (None: all)."""
    alerts_q = select(Alert).where(Alert.status == "active")
    alerts_count_q = select(func.count(Alert.id)).where(Alert.status == "active")
    events_q = (
        select(DeviceEvent, Device.name, Device.station_id)
        .join(Device, Device.id == DeviceEvent.device_id)
        .order_by(DeviceEvent.id.desc())
        .limit(RECENT_EVENTS)
    )
    if stations is not None:
        alerts_q = alerts_q.where(Alert.station_id.in_(stations))
        alerts_count_q = alerts_count_q.where(Alert.station_id.in_(stations))
        events_q = events_q.where(Device.station_id.in_(stations))
    active = int(await session.scalar(alerts_count_q) or 0)
    newest_alerts = (
        await session.scalars(alerts_q.order_by(Alert.id.desc()).limit(ACTIVE_ALERTS_SHOWN))
    ).all()
    events = []
    for ev, name, station_id in (await session.execute(events_q)).all():
        item = event_out(ev).model_dump(mode="json")
        item.update(device_name=name, station_id=station_id)
        events.append(item)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "devices": _count_devices(ctx, stations),
        "alerts": {
            "active": active,
            "items": [alert_out(a).model_dump(mode="json") for a in newest_alerts],
        },
        "recent_events": events,
        "links": link_states(ctx),
    }


# --- device workspace ------------------------------------------------------------------------------


async def workspace(session: AsyncSession, ctx: AppContext, device: Device) -> dict[str, Any]:
    """Everything a device page shows, in one call: the device, its latest values, recent events,
    commands still in flight and its firmware-update state."""
    channels = (
        await session.scalars(
            select(Channel)
            .where(Channel.kind == "device", Channel.source_id == device.id)
            .order_by(Channel.key)
        )
    ).all()
    latest = []
    for ch in channels:
        # The cache holds what this process stored; with several workers another one may have stored a
        # newer reading, which the row has. The newer of the two wins.
        cached = ctx.ingest.latest.get(ch.id) if ctx.ingest else None
        fresh = cached is not None and (ch.last_ts is None or cached[0] >= ch.last_ts)
        ts_us, value = cached if cached is not None and fresh else (ch.last_ts, ch.last_value)
        latest.append(
            {
                "channel": ch.id,
                "key": ch.key,
                "unit": ch.unit,
                "value": value,
                "ts": from_us(ts_us).isoformat() if ts_us is not None else None,
            }
        )
    events = (
        await session.scalars(
            select(DeviceEvent)
            .where(DeviceEvent.device_id == device.id)
            .order_by(DeviceEvent.id.desc())
            .limit(RECENT_EVENTS)
        )
    ).all()
    commands = (
        await session.scalars(
            select(Command)
            .where(Command.device_id == device.id, Command.status.in_(PENDING_COMMAND_STATES))
            .order_by(Command.created_at.desc())
        )
    ).all()
    ota_row = (
        await session.execute(
            select(OtaJobDevice, OtaJob)
            .join(OtaJob, OtaJob.id == OtaJobDevice.job_id)
            .where(OtaJobDevice.device_id == device.id, OtaJob.station_id == device.station_id)
            .order_by(OtaJob.id.desc())
            .limit(1)
        )
    ).first()
    ota = None
    if ota_row is not None:
        entry, job = ota_row
        ota = {
            "job_id": job.id,
            "job_status": job.status,
            "version": job.version,
            "state": entry.state,
            "progress": entry.progress,
            "error": entry.error,
            "active": job.status in OTA_ACTIVE_JOB_STATES and entry.state not in ("succeeded", "failed"),
        }
    known = ctx.devices.known.get(device.id) if ctx.devices else None
    body = device_out(device).model_dump(mode="json")
    if known is not None:
        body["status"] = known.status  # the runtime's view is newer than the last flush
    return {
        "device": body,
        "latest": latest,
        "recent_events": [event_out(e).model_dump(mode="json") for e in events],
        "pending_commands": [command_out(c).model_dump(mode="json") for c in commands],
        "ota": ota,
    }


# --- system ----------------------------------------------------------------------------------------


class RateSampler:
    """Turns monotonically growing counters into per-second rates over a short sliding window, so the
    status call needs no state of its own and stays cheap."""

    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window = window_seconds
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def observe(self, counters: dict[str, float], now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        self._samples.append((now, dict(counters)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_at, first = self._samples[0]
        elapsed = now - first_at
        if elapsed <= 0:
            return {key: 0.0 for key in counters}
        return {
            key: round(max(0.0, value - first.get(key, 0.0)) / elapsed, 2) for key, value in counters.items()
        }


def _data_dir_disk(path: Path) -> dict[str, Any]:
    usage = psutil.disk_usage(str(path))
    return {
        "path": str(path),
        "total_bytes": usage.total,
        "free_bytes": usage.free,
        "used_percent": usage.percent,
    }


async def database_size(session: AsyncSession, ctx: AppContext) -> int | None:
    settings = ctx.settings
    if settings.is_sqlite:
        database = make_url(settings.resolved_database_url).database
        if not database or database == ":memory:":
            return None
        path = Path(database)
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())
    return int(await session.scalar(text("SELECT pg_database_size(current_database())")) or 0)


async def backlogs(session: AsyncSession) -> dict[str, int]:
    outbox = await session.scalar(select(func.count(BrokerOutbox.id)).where(BrokerOutbox.done_at.is_(None)))
    rows = await session.execute(
        select(Delivery.status, func.count(Delivery.id))
        .where(Delivery.status.in_(("pending", "dead_letter")))
        .group_by(Delivery.status)
    )
    by_status = {status: int(n) for status, n in rows}
    return {
        "broker_outbox": int(outbox or 0),
        "deliveries_pending": by_status.get("pending", 0),
        "deliveries_dead_letter": by_status.get("dead_letter", 0),
    }


def ingest_counters(ctx: AppContext) -> dict[str, float]:
    ingest = ctx.ingest
    link = ctx.mqtt
    return {
        "messages": float(link.received if link else 0),
        "rows": float(ingest.committed_rows if ingest else 0),
    }


async def system(
    session: AsyncSession, ctx: AppContext, rates: dict[str, float], *, brief: bool = False
) -> dict[str, Any]:
    """Host and process health, storage, ingest rate and backlogs. `brief` leaves out what changes
    slowly (used for the `system.status` event every 15 s)."""
    process = psutil.Process(os.getpid())
    memory = psutil.virtual_memory()
    ingest = ctx.ingest
    body: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(),
        "version": __version__,
        "uptime_seconds": round(time.time() - ctx.started_at, 1),
        "cpu": {"percent": psutil.cpu_percent(interval=None), "count": psutil.cpu_count() or 1},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory": {
            "process_rss_bytes": process.memory_info().rss,
            "total_bytes": memory.total,
            "available_bytes": memory.available,
            "used_percent": memory.percent,
        },
        "ingest": {
            "messages_per_second": rates.get("messages", 0.0),
            "rows_per_second": rates.get("rows", 0.0),
            "queue_rows": ingest.queue_rows if ingest else 0,
            "committed_rows": ingest.committed_rows if ingest else 0,
        },
        "backlogs": await backlogs(session),
        "links": link_states(ctx),
    }
    if not brief:
        body.update(
            {
                "python": platform.python_version(),
                "platform": platform.platform(terse=True),
                "host_uptime_seconds": round(time.time() - psutil.boot_time(), 1),
                "disk": _data_dir_disk(ctx.settings.data_dir),
                "database": {
                    "kind": "sqlite" if ctx.settings.is_sqlite else "postgresql",
                    "size_bytes": await database_size(session, ctx),
                },
            }
        )
    return body
