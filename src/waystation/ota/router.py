"""HTTP routes for firmware and OTA rollouts (docs/ota.md).

Firmware and rollouts belong to a station and are admin business there: installation admins see every
station's, station admins their stations'. To anyone else a station's firmware and rollouts answer 404,
as if absent. The one route without a login is the download, whose signed link is the credential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal, role_at_least
from waystation.context import AppContext
from waystation.db import after_commit
from waystation.errors import FirmwareNotFound, OtaJobNotFound, StationNotFound
from waystation.ota import service, signing
from waystation.ota.models import Firmware, OtaJob
from waystation.ota.schemas import (
    DownloadUrlOut,
    FirmwareOut,
    FirmwarePage,
    JobCreate,
    JobDetail,
    JobOut,
    JobPage,
)
from waystation.ota.upload import firmware_dir, receive_upload
from waystation.security.params import RowId
from waystation.station import service as station_service

router = APIRouter(tags=["ota"])


def admin_stations(principal: Principal) -> list[str] | None:
    """The stations whose firmware and rollouts the caller manages; None for every station."""
    if principal.station_roles is None:
        return None
    return [s for s, role in principal.station_roles.items() if role_at_least(role, "admin")]


async def visible_firmware(session: AsyncSession, principal: Principal, firmware_id: int) -> Firmware:
    fw = await service.get_firmware(session, firmware_id)
    check_station(principal, fw.station_id, FirmwareNotFound(f"No firmware {firmware_id}."), "admin")
    return fw


async def visible_job(session: AsyncSession, principal: Principal, job_id: int) -> OtaJob:
    job = await service.get_job(session, job_id)
    check_station(principal, job.station_id, OtaJobNotFound(f"No rollout {job_id}."), "admin")
    return job


def _wake_driver(session: AsyncSession, ctx: AppContext) -> None:
    driver = ctx.ota
    if driver is not None:
        after_commit(session, driver.wake)


# --- firmware --------------------------------------------------------------------------------------------


@router.post("/firmware", response_model=FirmwareOut, status_code=201)
async def upload_firmware(
    request: Request,
    station_id: str | None = Query(default=None, max_length=32, description="default: the default station"),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> FirmwareOut:
    """Upload an image as multipart/form-data: `file`, `version`, `device_type`, optional `notes`.

    The file is streamed to disk and hashed (SHA-256) on the way; at most `WAYSTATION_FIRMWARE_MAX_BYTES`.
    """
    station = station_id or ctx.default_station_id
    # Checked before a byte of the body is read.
    check_station(principal, station, StationNotFound(f"No station {station!r}."), "admin")
    async with ctx.db.session() as session:
        await station_service.get_station(session, station)  # installation admins may name any id
    root = firmware_dir(ctx.settings)
    upload = await receive_upload(request, root / "tmp", ctx.settings.firmware_max_bytes)
    try:
        async with ctx.db.session() as session:
            fw = await service.store_firmware(session, ctx.settings, upload, station, principal.actor)
            audit.record(
                session,
                actor=principal.actor,
                action="firmware.upload",
                target=f"firmware:{fw.id}",
                summary=f"{fw.device_type} {fw.version}, {fw.size} bytes, sha256 {fw.sha256[:12]}…",
                ip=client_ip(request),
                station_id=fw.station_id,
            )
            return service.firmware_out(fw)
    finally:
        upload.discard()  # a no-op once the file was moved to its final name


@router.get("/firmware", response_model=FirmwarePage)
async def list_firmware(
    station_id: str | None = Query(default=None, max_length=32),
    device_type: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> FirmwarePage:
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_firmware(
            session,
            stations=admin_stations(principal),
            station_id=station_id,
            device_type=device_type,
            limit=limit,
            cursor=cursor,
        )
        return FirmwarePage(items=[service.firmware_out(f) for f in rows], next_cursor=next_cursor)


@router.get("/firmware/{firmware_id}", response_model=FirmwareOut)
async def get_firmware(
    firmware_id: RowId, principal: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> FirmwareOut:
    async with ctx.db.session() as session:
        return service.firmware_out(await visible_firmware(session, principal, firmware_id))


@router.delete("/firmware/{firmware_id}", status_code=204)
async def delete_firmware(
    firmware_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """Delete the image and its file; refused (409 `FIRMWARE_IN_USE`) while a running or paused
    rollout uses it."""
    async with ctx.db.session() as session:
        fw = await visible_firmware(session, principal, firmware_id)
        await service.delete_firmware(session, fw)
        audit.record(
            session,
            actor=principal.actor,
            action="firmware.delete",
            target=f"firmware:{fw.id}",
            summary=f"{fw.device_type} {fw.version}",
            ip=client_ip(request),
            station_id=fw.station_id,
        )
        path = service.firmware_path(ctx.settings, fw)
        after_commit(session, lambda: path.unlink(missing_ok=True))
    return Response(status_code=204)


@router.post("/firmware/{firmware_id}/download-url", response_model=DownloadUrlOut)
async def download_url(
    firmware_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DownloadUrlOut:
    """A fresh signed download link, valid for `WAYSTATION_FIRMWARE_URL_TTL_SECONDS` (5 minutes)."""
    async with ctx.db.session() as session:
        fw = await visible_firmware(session, principal, firmware_id)
        path, expires = signing.signed_path(ctx.internal.secret, fw.id, ctx.settings.firmware_url_ttl_seconds)
        # Handing out a link hands out the image: recorded like a write.
        audit.record(
            session,
            actor=principal.actor,
            action="firmware.download_url",
            target=f"firmware:{fw.id}",
            summary=f"{fw.device_type} {fw.version}, link valid until {expires}",
            ip=client_ip(request),
            station_id=fw.station_id,
        )
    return DownloadUrlOut(url=ctx.settings.base_url + path, expires_at=datetime.fromtimestamp(expires, UTC))


@router.get("/firmware/{firmware_id}/download", response_class=FileResponse)
async def download_firmware(
    firmware_id: RowId,
    expires: str | None = Query(default=None, max_length=20),
    sig: str | None = Query(default=None, max_length=128),
    ctx: AppContext = Depends(get_ctx),
) -> FileResponse:
    """The image itself, for devices: no login, the signed link is the credential (403
    `FIRMWARE_URL_INVALID`, 410 `FIRMWARE_URL_EXPIRED`)."""
    signing.verify(ctx.internal.secret, firmware_id, expires, sig)
    async with ctx.db.session() as session:
        fw = await service.get_firmware(session, firmware_id)
    path = service.firmware_path(ctx.settings, fw)
    if not path.is_file():
        raise FirmwareNotFound(f"The file of firmware {firmware_id} is missing from the data directory.")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=fw.filename,
        headers={"X-Firmware-SHA256": fw.sha256, "Cache-Control": "no-store"},
    )


# --- rollouts --------------------------------------------------------------------------------------------


async def _detail(session: AsyncSession, job: OtaJob) -> JobDetail:
    counts = (await service.state_counts(session, [job.id]))[job.id]
    rows = await service.job_devices(session, job.id)
    return JobDetail(
        **service.job_out(job, counts).model_dump(), devices=[service.job_device_out(r) for r in rows]
    )


@router.post("/ota/jobs", response_model=JobDetail, status_code=201)
async def create_job(
    body: JobCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> JobDetail:
    """Start a rollout of one firmware to devices of its type at its station, `batch_size` at a time."""
    async with ctx.db.session() as session:
        fw = await visible_firmware(session, principal, body.firmware_id)
        job = await service.create_job(session, ctx.settings, fw, body, principal.actor)
        audit.record(
            session,
            actor=principal.actor,
            action="ota.job_create",
            target=f"ota_job:{job.id}",
            summary=f"{fw.device_type} {fw.version}, batches of {job.batch_size}",
            ip=client_ip(request),
            station_id=job.station_id,
        )
        _wake_driver(session, ctx)
        return await _detail(session, job)


@router.get("/ota/jobs", response_model=JobPage)
async def list_jobs(
    station_id: str | None = Query(default=None, max_length=32),
    status: str | None = Query(default=None, pattern="^(running|paused|cancelled|completed)$"),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> JobPage:
    """Rollouts, newest first, with their device counts per state."""
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_jobs(
            session,
            stations=admin_stations(principal),
            station_id=station_id,
            status=status,
            limit=limit,
            cursor=cursor,
        )
        counts = await service.state_counts(session, [j.id for j in rows])
        return JobPage(items=[service.job_out(j, counts[j.id]) for j in rows], next_cursor=next_cursor)


@router.get("/ota/jobs/{job_id}", response_model=JobDetail)
async def get_job(
    job_id: RowId, principal: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> JobDetail:
    async with ctx.db.session() as session:
        return await _detail(session, await visible_job(session, principal, job_id))


@router.post("/ota/jobs/{job_id}/cancel", response_model=JobOut)
async def cancel_job(
    job_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> JobOut:
    """Stop the rollout: pending devices are left as they are; devices updating now finish or time out."""
    return await _change_job(job_id, request, principal, ctx, service.cancel_job, "ota.job_cancel")


@router.post("/ota/jobs/{job_id}/resume", response_model=JobOut)
async def resume_job(
    job_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> JobOut:
    """Continue a paused rollout with its next batch."""
    return await _change_job(job_id, request, principal, ctx, service.resume_job, "ota.job_resume")


async def _change_job(
    job_id: int,
    request: Request,
    principal: Principal,
    ctx: AppContext,
    change: Callable[[AsyncSession, OtaJob, str], Awaitable[OtaJob]],
    action: str,
) -> JobOut:
    """Cancel or resume: the change, its audit entry and a wake-up for the driver, in one transaction."""
    async with ctx.db.session() as session:
        job = await visible_job(session, principal, job_id)
        await change(session, job, principal.actor)
        audit.record(
            session,
            actor=principal.actor,
            action=action,
            target=f"ota_job:{job.id}",
            summary=f"{job.device_type} {job.version}",
            ip=client_ip(request),
            station_id=job.station_id,
        )
        _wake_driver(session, ctx)
        counts = (await service.state_counts(session, [job.id]))[job.id]
        return service.job_out(job, counts)
