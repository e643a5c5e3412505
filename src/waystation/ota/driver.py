"""The rollout driver: sends batches, follows each device through its update, pauses and finishes rollouts.

One task, supervised by the app. Everything it knows is in the database, so a restart loses nothing:
on start (and whenever its bus queue overflowed) it re-reads each updating device's command status and
reported firmware. Between those, it reacts to bus events from the device runtime:

    device.command_acked   `applied` → applying; `failed` → failed
    device.event (ota)     {"state": "downloading"|"applying"|"failed", "progress": 0-100, "error": …}
    device.updated         a handshake: the new version → succeeded; another one while applying → failed

and every `WAYSTATION_OTA_CHECK_INTERVAL_SECONDS` it times out silent devices and starts the next
batch of each running rollout whose current batch is done. States only move forward: an `ota` event
that arrives after the `applied` ack that followed it is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.bus import Bus, Event, Gap, TypeFilter
from waystation.config import Settings
from waystation.db import Database, emit, utcnow
from waystation.devices import service as devices_service
from waystation.devices.runtime import DeviceRuntime
from waystation.errors import CommandNotFound, DeviceNotFound, WaystationError
from waystation.oplog.service import write_entry
from waystation.ota import service
from waystation.ota.models import Firmware, OtaJob, OtaJobDevice
from waystation.ota.schemas import IN_FLIGHT, progress_event
from waystation.ota.signing import refresh_link, signed_path
from waystation.ota.upload import firmware_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

_RANK = {"pending": 0, "sent": 1, "downloading": 2, "applying": 3}
_QUEUE = 10_000  # bus events waiting; on overflow the driver re-reads the database instead
_SWEEP_AGE_SECONDS = 3600.0  # leftover upload files older than this are removed


class OtaDriver:
    def __init__(
        self, settings: Settings, db: Database, bus: Bus, runtime: DeviceRuntime, secret: bytes
    ) -> None:
        self.settings = settings
        self.db = db
        self.runtime = runtime
        self._secret = secret
        # Commands to offline devices wait in the queue; sign their link when they actually go out.
        ttl = settings.firmware_url_ttl_seconds
        runtime.before_send["ota_update"] = lambda params: (
            {**params, "url": refresh_link(params["url"], secret, ttl)}
            if isinstance(params.get("url"), str)
            else params
        )
        # Subscribed now, before the MQTT link starts, so no ack or handshake slips past.
        self._sub = bus.subscribe(
            TypeFilter(["device.command_acked", "device.event", "device.updated"]), maxsize=_QUEUE
        )
        self._wake = asyncio.Event()
        self._next_item: asyncio.Task[Event | Gap] | None = None

    def wake(self) -> None:
        """Something changed (a new, cancelled or resumed rollout): look at the rollouts now."""
        self._wake.set()

    def close(self) -> None:
        self._sub.close()

    # --- main loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._safely(self.sweep())
        await self.reconcile()
        loop = asyncio.get_running_loop()
        interval = self.settings.ota_check_interval_seconds
        due = 0.0
        try:
            while True:
                if loop.time() >= due:
                    await self._safely(self.tick())
                    due = loop.time() + interval
                item = await self._next(max(0.0, due - loop.time()))
                if item is None:
                    continue
                if isinstance(item, Gap):
                    log.warning("OTA driver missed %d bus events; re-reading the rollouts", item.dropped)
                    await self._safely(self.reconcile())
                    due = 0.0
                elif await self._safely(self.handle(item)):
                    due = 0.0  # a device finished: maybe the batch is done
        finally:
            if self._next_item is not None:
                self._next_item.cancel()
                self._next_item = None

    async def _next(self, wait_seconds: float) -> Event | Gap | None:
        """The next bus event; None after `wait_seconds`, or after a `wake()` (which runs a tick first)."""
        if self._next_item is None:
            self._next_item = asyncio.ensure_future(self._sub.get())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {self._next_item, woken}, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
        if self._next_item.done():
            item = self._next_item.result()
            self._next_item = None
            return item
        if self._wake.is_set():
            self._wake.clear()
            await self._safely(self.tick())
        return None

    async def _safely(self, step: Awaitable[T]) -> T | None:
        """One failed step (a database hiccup) is logged and retried by the next tick or reconcile."""
        try:
            return await step
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("OTA driver step failed")
            return None

    # --- periodic work ----------------------------------------------------------------------------

    async def tick(self) -> None:
        await self.expire()
        async with self.db.session() as session:
            job_ids = list(
                (await session.scalars(select(OtaJob.id).where(OtaJob.finished_at.is_(None)))).all()
            )
        for job_id in job_ids:
            await self.advance(job_id)

    async def expire(self) -> None:
        now = utcnow()
        async with self.db.session() as session:
            for row, job in await self._in_flight(session):
                limit = job.device_timeout_seconds
                if row.sent_at is not None and now - row.sent_at >= timedelta(seconds=limit):
                    error = f"no new firmware reported within {limit:g} s"
                    await self._finish(session, job, row, "timed_out", error)

    async def advance(self, job_id: int) -> None:
        """Finish the rollout, or start its next batch, once nothing of it is updating."""
        async with self.db.session() as session:
            job = await session.get(OtaJob, job_id)
            if job is None or job.finished_at is not None:
                return
            counts = (await service.state_counts(session, [job_id]))[job_id]
            if any(counts[s] for s in IN_FLIGHT):
                return
            now = utcnow()
            if job.status == "cancelled":
                job.finished_at = now
                emit(
                    session, "ota.progress", progress_event(job.id, job.status, counts=counts), job.station_id
                )
                return
            if counts["pending"] == 0:
                await self._complete(session, job, counts)
                return
            if job.status != "running":
                return
        await self.dispatch(job_id)

    async def _complete(self, session: AsyncSession, job: OtaJob, counts: dict[str, int]) -> None:
        now = utcnow()
        done = await session.execute(
            update(OtaJob)
            .where(OtaJob.id == job.id, OtaJob.status.in_(("running", "paused")))
            .values(status="completed", finished_at=now, updated_at=now)
            .returning(OtaJob.id)
        )
        if done.scalar() is None:
            return
        failed = counts["failed"] + counts["timed_out"]
        await write_entry(
            session,
            "warning" if failed else "info",
            "ota",
            f"Rollout {job.id} finished: {counts['succeeded']} device(s) updated to {job.version}, "
            f"{counts['failed']} failed, {counts['timed_out']} timed out.",
            related={"ota_job_id": job.id},
            station_id=job.station_id,
        )
        emit(session, "ota.progress", progress_event(job.id, "completed", counts=counts), job.station_id)

    async def dispatch(self, job_id: int) -> None:
        """Claim the next batch (pending → sent) in one transaction, then send each device its command."""
        now = utcnow()
        async with self.db.session() as session:
            batch = (
                await session.execute(
                    update(OtaJob)
                    .where(OtaJob.id == job_id, OtaJob.status == "running")
                    .values(current_batch=OtaJob.current_batch + 1, updated_at=now)
                    .returning(OtaJob.current_batch)
                )
            ).scalar()
            if batch is None:
                return  # cancelled or paused meanwhile
            job = await session.get(OtaJob, job_id)
            assert job is not None
            firmware = await session.get(Firmware, job.firmware_id) if job.firmware_id is not None else None
            ids = (
                await session.scalars(
                    select(OtaJobDevice.id)
                    .where(OtaJobDevice.job_id == job_id, OtaJobDevice.state == "pending")
                    .order_by(OtaJobDevice.position)
                    .limit(job.batch_size)
                )
            ).all()
            rows = (
                await session.scalars(
                    update(OtaJobDevice)
                    .where(OtaJobDevice.id.in_(list(ids)), OtaJobDevice.state == "pending")
                    .values(state="sent", batch=batch, sent_at=now, updated_at=now)
                    .returning(OtaJobDevice)
                )
            ).all()
            for row in rows:
                emit(session, "ota.progress", service.device_event(job, row), job.station_id)
            await write_entry(
                session,
                "info",
                "ota",
                f"Rollout {job.id}: batch {batch} sent to {len(rows)} device(s).",
                related={"ota_job_id": job.id, "batch": batch},
                station_id=job.station_id,
            )
            claimed = [(row.id, row.device_id) for row in rows]
            params: dict[str, Any] | None = None
            if firmware is not None:
                path, _ = signed_path(self._secret, firmware.id, self.settings.firmware_url_ttl_seconds)
                params = {"url": self.settings.base_url + path, "sha256": job.sha256, "version": job.version}
        sent: dict[int, str] = {}
        failed: dict[int, str] = {}
        for row_id, device_id in claimed:
            if params is None:
                failed[row_id] = "the firmware was deleted"
                continue
            try:
                cmd = await self.runtime.submit_command(
                    device_id, "ota_update", params, actor=f"ota:job-{job_id}", ip=None
                )
            except WaystationError as exc:  # the device was deleted meanwhile, or its type changed
                failed[row_id] = exc.detail
            else:
                sent[row_id] = cmd.request_id
        async with self.db.session() as session:
            for row_id, request_id in sent.items():
                await session.execute(
                    update(OtaJobDevice).where(OtaJobDevice.id == row_id).values(request_id=request_id)
                )
            if failed:
                job = await session.get(OtaJob, job_id)
                assert job is not None
                for row_id, error in failed.items():
                    unsent = await session.get(OtaJobDevice, row_id)
                    if unsent is not None and unsent.state in IN_FLIGHT:
                        await self._finish(session, job, unsent, "failed", error)

    # --- reacting to devices ----------------------------------------------------------------------

    async def handle(self, ev: Event) -> bool:
        """Apply one bus event; True when a device reached a final state."""
        data = ev.data
        if ev.type == "device.command_acked":
            status = data.get("status")
            request_id = data.get("request_id")
            if status not in ("applied", "failed") or not isinstance(request_id, str):
                return False  # `accepted` changes nothing; the runtime's own `timeout` is not ours
            async with self.db.session() as session:
                found = await self._by_request(session, request_id)
                if found is None:
                    return False
                row, job = found
                if status == "applied":
                    await self._move(session, job, row, "applying", None)
                    return False
                await self._finish(
                    session, job, row, "failed", _text(data.get("error")) or "the update failed"
                )
                return True
        device_id = data.get("device_id")
        if not isinstance(device_id, str):
            return False
        if ev.type == "device.event" and data.get("kind") == "ota":
            return await self._on_ota_event(device_id, data.get("data"))
        if ev.type == "device.updated" and "firmware_version" in (data.get("changed") or ()):
            async with self.db.session() as session:
                found = await self._by_device(session, device_id)
                if found is None:
                    return False
                return await self._check_version(session, *found)
        return False

    async def _on_ota_event(self, device_id: str, payload: Any) -> bool:
        if not isinstance(payload, dict):
            return False
        state = payload.get("state")
        progress = payload.get("progress")
        if not (type(progress) is int and 0 <= progress <= 100):
            progress = None
        async with self.db.session() as session:
            found = await self._by_device(session, device_id)
            if found is None:
                return False
            row, job = found
            if state in ("downloading", "applying"):
                await self._move(session, job, row, state, progress)
                return False
            if state == "failed":
                error = _text(payload.get("error")) or "the device reported a failed update"
                await self._finish(session, job, row, "failed", error)
                return True
        return False

    async def _check_version(
        self, session: AsyncSession, row: OtaJobDevice, job: OtaJob, fail_on_other: bool = True
    ) -> bool:
        """The device's reported firmware: the target version means success. Another version right
        after a handshake while applying means it restarted into the old image (not at reconcile: the
        handshake stored then may predate the reboot)."""
        try:
            device = await devices_service.get_device(session, row.device_id)
        except DeviceNotFound:
            return False
        if device.firmware_version == job.version:
            row.progress = 100
            await self._finish(session, job, row, "succeeded", None)
            return True
        if fail_on_other and row.state == "applying" and device.firmware_version:
            error = f"the device restarted with firmware {device.firmware_version}, not {job.version}"
            await self._finish(session, job, row, "failed", error)
            return True
        return False

    async def reconcile(self) -> None:
        """Catch up from the database: acks and handshakes that arrived while the driver was not looking
        (the station was down, or its bus queue overflowed) are in the commands and devices tables."""
        async with self.db.session() as session:
            for row, job in await self._in_flight(session):
                if row.request_id is not None:
                    try:
                        cmd = await devices_service.get_command(session, row.device_id, row.request_id)
                    except CommandNotFound:
                        cmd = None
                    if cmd is not None and cmd.status == "failed":
                        await self._finish(session, job, row, "failed", cmd.error or "the update failed")
                        continue
                    if cmd is not None and cmd.status == "applied":
                        await self._move(session, job, row, "applying", None)
                await self._check_version(session, row, job, fail_on_other=False)

    # --- state changes ----------------------------------------------------------------------------

    async def _in_flight(self, session: AsyncSession) -> list[tuple[OtaJobDevice, OtaJob]]:
        rows = await session.execute(
            select(OtaJobDevice, OtaJob)
            .join(OtaJob, OtaJob.id == OtaJobDevice.job_id)
            .where(OtaJobDevice.state.in_(IN_FLIGHT))
            .order_by(OtaJobDevice.id)
        )
        return [(row, job) for row, job in rows]

    async def _by_request(self, session: AsyncSession, request_id: str) -> tuple[OtaJobDevice, OtaJob] | None:
        found = await session.execute(
            select(OtaJobDevice, OtaJob)
            .join(OtaJob, OtaJob.id == OtaJobDevice.job_id)
            .where(OtaJobDevice.request_id == request_id, OtaJobDevice.state.in_(IN_FLIGHT))
        )
        first = found.first()
        return (first[0], first[1]) if first is not None else None

    async def _by_device(self, session: AsyncSession, device_id: str) -> tuple[OtaJobDevice, OtaJob] | None:
        # A device is updating in at most one rollout at a time (creating a second one is refused).
        found = await session.execute(
            select(OtaJobDevice, OtaJob)
            .join(OtaJob, OtaJob.id == OtaJobDevice.job_id)
            .where(OtaJobDevice.device_id == device_id, OtaJobDevice.state.in_(IN_FLIGHT))
            .order_by(OtaJobDevice.id.desc())
        )
        first = found.first()
        return (first[0], first[1]) if first is not None else None

    async def _move(
        self, session: AsyncSession, job: OtaJob, row: OtaJobDevice, state: str, progress: int | None
    ) -> None:
        """Forward only; a repeated state with new progress is still news."""
        if _RANK[state] < _RANK[row.state] or (
            state == row.state and (progress is None or progress == row.progress)
        ):
            return
        row.state = state
        if progress is not None:
            row.progress = progress
        row.updated_at = utcnow()
        emit(session, "ota.progress", service.device_event(job, row), job.station_id)

    async def _finish(
        self, session: AsyncSession, job: OtaJob, row: OtaJobDevice, state: str, error: str | None
    ) -> None:
        now = utcnow()
        row.state, row.error = state, (error[:500] if error else None)
        row.finished_at = row.updated_at = now
        emit(session, "ota.progress", service.device_event(job, row), job.station_id)
        if state == "succeeded":
            return
        await write_entry(
            session,
            "warning",
            "ota",
            f"Rollout {job.id}: {row.device_id} {state.replace('_', ' ')}: {row.error}",
            related={"ota_job_id": job.id, "device_id": row.device_id},
            station_id=job.station_id,
        )
        await self._maybe_pause(session, job, row.batch)

    async def _maybe_pause(self, session: AsyncSession, job: OtaJob, batch: int | None) -> None:
        if batch is None or job.status != "running":
            return
        await session.flush()  # the sessions do not autoflush; count this device's new state too
        rows = (
            await session.execute(
                select(OtaJobDevice.state, func.count())
                .where(OtaJobDevice.job_id == job.id, OtaJobDevice.batch == batch)
                .group_by(OtaJobDevice.state)
            )
        ).all()
        in_batch = sum(int(n) for _, n in rows)
        failures = sum(int(n) for state, n in rows if state in ("failed", "timed_out"))
        limit = service.failure_limit(job.failure_threshold, in_batch)
        if failures < limit:
            return
        reason = f"{failures} of {in_batch} device(s) in batch {batch} failed (threshold {limit})"
        paused = await session.execute(
            update(OtaJob)
            .where(OtaJob.id == job.id, OtaJob.status == "running")
            .values(status="paused", paused_reason=reason, updated_at=utcnow())
            .returning(OtaJob.id)
        )
        if paused.scalar() is None:
            return
        job.status = "paused"
        await write_entry(
            session,
            "warning",
            "ota",
            f"Rollout {job.id} paused: {reason}. Resume it or cancel it.",
            related={"ota_job_id": job.id},
            station_id=job.station_id,
        )
        emit(session, "ota.progress", progress_event(job.id, "paused", reason=reason), job.station_id)

    # --- files ------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Remove interrupted uploads and images whose row is gone (a deleted station, a failed commit).
        Only old files: an upload in progress right now has fresh ones."""
        async with self.db.session() as session:
            known = set((await session.scalars(select(Firmware.file_name))).all())
        await asyncio.to_thread(_sweep, firmware_dir(self.settings), known, time.time() - _SWEEP_AGE_SECONDS)


def _sweep(root: Path, known: set[str], cutoff: float) -> None:
    leftovers = [*(root / "tmp").glob("*.part"), *(p for p in root.glob("*.bin") if p.name not in known)]
    for path in leftovers:
        _remove_if_older(path, cutoff)


def _remove_if_older(path: Path, cutoff: float) -> None:
    try:
        if path.stat().st_mtime < cutoff:
            path.unlink()
    except OSError:
        log.debug("could not remove %s", path, exc_info=True)


def _text(value: Any) -> str | None:
    return value[:500] if isinstance(value, str) and value else None
