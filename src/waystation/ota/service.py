"""Firmware and rollout use cases: storing uploads, listing, creating, cancelling and resuming rollouts.

Everything runs inside the caller's unit of work (no commits here). The rollout driver (driver.py) moves
devices through their states; the functions here are the ones the HTTP routes and the driver share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.config import Settings
from waystation.db import emit, utcnow
from waystation.devices import service as devices
from waystation.devices.models import Device
from waystation.devices.service import decode_cursor, encode_cursor
from waystation.errors import (
    BadRequest,
    DeviceNotFound,
    FirmwareExists,
    FirmwareInUse,
    FirmwareNotFound,
    FirmwareUploadInvalid,
    OtaDeviceBusy,
    OtaJobFinished,
    OtaJobNotFound,
    OtaJobNotPaused,
    OtaTargetInvalid,
)
from waystation.oplog.service import write_entry
from waystation.ota.models import Firmware, OtaJob, OtaJobDevice
from waystation.ota.schemas import (
    ACTIVE_JOB,
    DEVICE_STATES,
    IN_FLIGHT,
    MAX_NOTES_CHARS,
    VERSION_PATTERN,
    FirmwareOut,
    JobCreate,
    JobDeviceOut,
    JobOut,
    progress_event,
)
from waystation.ota.upload import Upload, firmware_dir
from waystation.security.params import MAX_ROW_ID

_VERSION_RE = re.compile(VERSION_PATTERN)
_IN_CHUNK = 500  # ids per IN (...) list, well under every driver's parameter limit
BUSY_STATES = ("pending", *IN_FLIGHT)


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


def _cursor(row_id: int) -> str:
    return encode_cursor(str(row_id))


def _uncursor(cursor: str) -> int:
    (raw,) = decode_cursor(cursor, 1)
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.") from exc
    if not 0 <= value <= MAX_ROW_ID:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.")
    return value


# --- firmware --------------------------------------------------------------------------------------------


def firmware_out(fw: Firmware) -> FirmwareOut:
    return FirmwareOut(
        id=fw.id,
        station_id=fw.station_id,
        device_type=fw.device_type,
        version=fw.version,
        notes=fw.notes,
        filename=fw.filename,
        size=fw.size,
        sha256=fw.sha256,
        created_by=fw.created_by,
        created_at=fw.created_at,
    )


def firmware_path(settings: Settings, fw: Firmware) -> Path:
    return firmware_dir(settings) / fw.file_name


async def store_firmware(
    session: AsyncSession, settings: Settings, upload: Upload, station_id: str, actor: str
) -> Firmware:
    """Check the form fields, add the row and move the received file to its final name.

    If the unit of work then fails to commit, the file is an orphan; the driver's sweep removes it."""
    fields = upload.fields
    version = fields.get("version", "").strip()
    device_type = fields.get("device_type", "").strip()
    notes = fields.get("notes", "")
    if upload.temp_path is None or upload.size == 0:
        raise FirmwareUploadInvalid("The 'file' field is missing or empty.")
    if not _VERSION_RE.fullmatch(version):
        raise FirmwareUploadInvalid(
            "'version' is required: 1-64 letters, digits and . _ + - (starting with a letter or digit)."
        )
    if len(notes) > MAX_NOTES_CHARS:
        raise FirmwareUploadInvalid(f"'notes' is longer than {MAX_NOTES_CHARS} characters.")
    if "\x00" in notes:
        raise FirmwareUploadInvalid("'notes' must not contain NUL characters.")
    if not device_type:
        raise FirmwareUploadInvalid("'device_type' is required.")
    await devices.get_type(session, device_type)  # 422 DEVICE_TYPE_UNKNOWN
    existing = await session.scalar(
        select(Firmware.id).where(
            Firmware.station_id == station_id,
            Firmware.device_type == device_type,
            Firmware.version == version,
        )
    )
    if existing is not None:
        raise FirmwareExists(f"Firmware {version} for {device_type} already exists (id {existing}).")
    fw = Firmware(
        station_id=station_id,
        device_type=device_type,
        version=version,
        notes=notes,
        # Offered back in Content-Disposition: printable characters only.
        filename=(
            "".join(c for c in upload.filename or "" if c.isprintable()) or f"{device_type}-{version}.bin"
        )[:255],
        file_name="",
        size=upload.size,
        sha256=upload.sha256,
        created_by=actor[:120],
        created_at=utcnow(),
    )
    session.add(fw)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent upload of the same version won the race
        raise FirmwareExists(f"Firmware {version} for {device_type} already exists.") from exc
    fw.file_name = f"{fw.id}.bin"
    upload.temp_path.replace(firmware_path(settings, fw))  # same file system: an atomic rename
    return fw


async def get_firmware(session: AsyncSession, firmware_id: int) -> Firmware:
    fw = await session.get(Firmware, firmware_id)
    if fw is None:
        raise FirmwareNotFound(f"No firmware {firmware_id}.")
    return fw


async def list_firmware(
    session: AsyncSession,
    *,
    stations: Collection[str] | None,
    station_id: str | None,
    device_type: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Firmware], str | None]:
    """Newest first; `stations` None means every station's."""
    query = select(Firmware).order_by(Firmware.id.desc()).limit(limit + 1)
    if stations is not None:
        query = query.where(Firmware.station_id.in_(list(stations)))
    if station_id:
        query = query.where(Firmware.station_id == station_id)
    if device_type:
        query = query.where(Firmware.device_type == device_type)
    if cursor:
        query = query.where(Firmware.id < _uncursor(cursor))
    rows = list((await session.scalars(query)).all())
    next_cursor = _cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def delete_firmware(session: AsyncSession, fw: Firmware) -> None:
    """Refused while a running or paused rollout uses it; finished rollouts keep their history."""
    active = await session.scalar(
        select(OtaJob.id).where(OtaJob.firmware_id == fw.id, OtaJob.status.in_(ACTIVE_JOB)).limit(1)
    )
    if active is not None:
        raise FirmwareInUse(f"Rollout {active} uses this firmware; cancel it or let it finish first.")
    await session.delete(fw)


# --- rollouts --------------------------------------------------------------------------------------------


def job_out(job: OtaJob, counts: dict[str, int]) -> JobOut:
    return JobOut(
        id=job.id,
        station_id=job.station_id,
        firmware_id=job.firmware_id,
        device_type=job.device_type,
        version=job.version,
        sha256=job.sha256,
        status=job.status,
        batch_size=job.batch_size,
        failure_threshold=job.failure_threshold,
        device_timeout_seconds=job.device_timeout_seconds,
        current_batch=job.current_batch,
        paused_reason=job.paused_reason,
        created_by=job.created_by,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        counts=counts,
    )


def job_device_out(row: OtaJobDevice) -> JobDeviceOut:
    return JobDeviceOut(
        device_id=row.device_id,
        state=row.state,
        batch=row.batch,
        progress=row.progress,
        error=row.error,
        from_version=row.from_version,
        request_id=row.request_id,
        sent_at=row.sent_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
    )


def device_event(job: OtaJob, row: OtaJobDevice, job_status: str | None = None) -> dict[str, Any]:
    return progress_event(
        job.id,
        job_status or job.status,
        row.device_id,
        state=row.state,
        progress=row.progress,
        error=row.error,
        batch=row.batch,
    )


async def state_counts(session: AsyncSession, job_ids: Collection[int]) -> dict[int, dict[str, int]]:
    """Devices per state for each job; every state is present (0 when none)."""
    counts = {job_id: dict.fromkeys(DEVICE_STATES, 0) for job_id in job_ids}
    if not counts:
        return counts
    rows = await session.execute(
        select(OtaJobDevice.job_id, OtaJobDevice.state, func.count())
        .where(OtaJobDevice.job_id.in_(list(counts)))
        .group_by(OtaJobDevice.job_id, OtaJobDevice.state)
    )
    for job_id, state, count in rows:
        counts[job_id][state] = int(count)
    return counts


async def get_job(session: AsyncSession, job_id: int) -> OtaJob:
    job = await session.get(OtaJob, job_id)
    if job is None:
        raise OtaJobNotFound(f"No rollout {job_id}.")
    return job


async def job_devices(session: AsyncSession, job_id: int) -> Sequence[OtaJobDevice]:
    query = select(OtaJobDevice).where(OtaJobDevice.job_id == job_id).order_by(OtaJobDevice.position)
    return (await session.scalars(query)).all()


async def list_jobs(
    session: AsyncSession,
    *,
    stations: Collection[str] | None,
    station_id: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[OtaJob], str | None]:
    """Newest first; `stations` None means every station's."""
    query = select(OtaJob).order_by(OtaJob.id.desc()).limit(limit + 1)
    if stations is not None:
        query = query.where(OtaJob.station_id.in_(list(stations)))
    if station_id:
        query = query.where(OtaJob.station_id == station_id)
    if status:
        query = query.where(OtaJob.status == status)
    if cursor:
        query = query.where(OtaJob.id < _uncursor(cursor))
    rows = list((await session.scalars(query)).all())
    next_cursor = _cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def _targets(session: AsyncSession, fw: Firmware, body: JobCreate) -> list[Device]:
    if body.all_devices:
        found: list[Device] = []
        cursor: str | None = None
        while True:
            page, cursor = await devices.list_devices(
                session, station_id=fw.station_id, type_id=fw.device_type, limit=1000, cursor=cursor
            )
            found.extend(d for d in page if d.enabled)
            if cursor is None or len(found) > 10_000:
                break
        if not found:
            raise OtaTargetInvalid(f"The station has no enabled {fw.device_type} devices.")
        if len(found) > 10_000:
            raise OtaTargetInvalid("A rollout takes at most 10000 devices; list them in parts.")
        return found
    targets: list[Device] = []
    for device_id in dict.fromkeys(body.device_ids or []):  # duplicates dropped, order kept
        try:
            device = await devices.get_device(session, device_id)
        except DeviceNotFound:
            device = None
        if device is None or device.station_id != fw.station_id:
            # A device of another station is as absent as an unknown one.
            raise DeviceNotFound(f"No device {device_id!r} at the firmware's station.")
        if device.type != fw.device_type:
            raise OtaTargetInvalid(
                f"Device {device_id!r} is a {device.type}; this firmware is for {fw.device_type}."
            )
        if not device.enabled:
            raise OtaTargetInvalid(f"Device {device_id!r} is disabled.")
        targets.append(device)
    return targets


async def create_job(
    session: AsyncSession, settings: Settings, fw: Firmware, body: JobCreate, actor: str
) -> OtaJob:
    targets = await _targets(session, fw, body)
    ids = [d.id for d in targets]
    busy: list[str] = []
    for chunk in _chunks(ids):
        busy.extend(
            (
                await session.scalars(
                    select(OtaJobDevice.device_id).where(
                        OtaJobDevice.device_id.in_(list(chunk)), OtaJobDevice.state.in_(BUSY_STATES)
                    )
                )
            ).all()
        )
    if busy:
        shown = ", ".join(sorted(set(busy))[:10])
        raise OtaDeviceBusy(
            f"Already in a rollout that has not reached them yet or is updating them: {shown}."
        )
    now = utcnow()
    job = OtaJob(
        station_id=fw.station_id,
        firmware_id=fw.id,
        device_type=fw.device_type,
        version=fw.version,
        sha256=fw.sha256,
        status="running",
        batch_size=body.batch_size,
        failure_threshold=body.failure_threshold,
        device_timeout_seconds=body.device_timeout_seconds or settings.ota_device_timeout_seconds,
        current_batch=0,
        created_by=actor[:120],
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    await session.flush()
    rows = [
        {
            "job_id": job.id,
            "device_id": device.id,
            "position": position,
            "state": "pending",
            "from_version": device.firmware_version,
            "updated_at": now,
        }
        for position, device in enumerate(targets)
    ]
    for start in range(0, len(rows), _IN_CHUNK):
        await session.execute(insert(OtaJobDevice), rows[start : start + _IN_CHUNK])
    await write_entry(
        session,
        "info",
        "ota",
        f"Rollout {job.id} started: {fw.device_type} firmware {fw.version} to {len(rows)} device(s) "
        f"in batches of {job.batch_size}.",
        related={"ota_job_id": job.id, "firmware_id": fw.id},
        station_id=job.station_id,
    )
    counts = dict.fromkeys(DEVICE_STATES, 0)
    counts["pending"] = len(rows)
    emit(session, "ota.progress", progress_event(job.id, job.status, counts=counts), job.station_id)
    return job


async def cancel_job(session: AsyncSession, job: OtaJob, actor: str) -> OtaJob:
    """Pending devices are never sent the update (they become `cancelled`); devices already updating
    finish or time out, and the rollout gets its `finished_at` once the last of them is done."""
    now = utcnow()
    changed = await session.execute(
        update(OtaJob)
        .where(OtaJob.id == job.id, OtaJob.status.in_(ACTIVE_JOB))
        .values(status="cancelled", updated_at=now)
        .returning(OtaJob.id)
    )
    if changed.scalar() is None:
        raise OtaJobFinished(f"Rollout {job.id} is already {job.status}.")
    cancelled = (
        await session.execute(
            update(OtaJobDevice)
            .where(OtaJobDevice.job_id == job.id, OtaJobDevice.state == "pending")
            .values(state="cancelled", finished_at=now, updated_at=now)
            .returning(OtaJobDevice.device_id)
        )
    ).scalars()
    cancelled_ids = list(cancelled)
    in_flight = await session.scalar(
        select(func.count()).where(OtaJobDevice.job_id == job.id, OtaJobDevice.state.in_(IN_FLIGHT))
    )
    values: dict[str, Any] = {"finished_at": now} if not in_flight else {}
    if values:
        await session.execute(update(OtaJob).where(OtaJob.id == job.id).values(**values))
    await session.refresh(job)
    for device_id in cancelled_ids:
        emit(
            session,
            "ota.progress",
            progress_event(job.id, job.status, device_id, state="cancelled", progress=None, error=None),
            job.station_id,
        )
    await write_entry(
        session,
        "info",
        "ota",
        f"Rollout {job.id} cancelled by {actor}: {len(cancelled_ids)} pending device(s) left as they are"
        + (f", {in_flight} still updating." if in_flight else "."),
        related={"ota_job_id": job.id},
        station_id=job.station_id,
    )
    emit(session, "ota.progress", progress_event(job.id, job.status), job.station_id)
    return job


async def resume_job(session: AsyncSession, job: OtaJob, actor: str) -> OtaJob:
    now = utcnow()
    changed = await session.execute(
        update(OtaJob)
        .where(OtaJob.id == job.id, OtaJob.status == "paused")
        .values(status="running", paused_reason=None, updated_at=now)
        .returning(OtaJob.id)
    )
    if changed.scalar() is None:
        raise OtaJobNotPaused(f"Rollout {job.id} is {job.status}, not paused.")
    await session.refresh(job)
    await write_entry(
        session,
        "info",
        "ota",
        f"Rollout {job.id} resumed by {actor}.",
        related={"ota_job_id": job.id},
        station_id=job.station_id,
    )
    emit(session, "ota.progress", progress_event(job.id, job.status), job.station_id)
    return job


def failure_limit(threshold: float, batch_devices: int) -> int:
    """How many failed devices in a batch of `batch_devices` pause the rollout."""
    if threshold >= 1:
        return int(threshold)
    return max(1, math.ceil(threshold * batch_devices))
