"""HTTP routes for snapshots (docs/backup.md): installation owners and admins only, because a snapshot
holds every station's configuration and credentials."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response

from waystation.auth.deps import client_ip, get_ctx, require_global
from waystation.auth.roles import Principal
from waystation.config import Settings
from waystation.context import AppContext
from waystation.errors import SnapshotTooLarge
from waystation.snapshots import store
from waystation.snapshots.operations import Actor, export_snapshot, import_snapshot, reload_runtime
from waystation.snapshots.schemas import ExportRequest, ImportResult, SnapshotList

router = APIRouter(tags=["snapshots"])

IMPORT_PATH = "/api/v1/snapshots/import"
FORM_OVERHEAD_BYTES = 64 * 1024  # the passphrase, the flag and the part headers around the file
AGE_MEDIA_TYPE = "application/octet-stream"


def snapshot_body_limits(settings: Settings) -> dict[str, int]:
    """The import route's request body limit (BodySizeLimitMiddleware's `by_path`): the largest snapshot
    plus the form around it, instead of the 1 MiB default."""
    return {IMPORT_PATH: settings.snapshot_max_bytes + FORM_OVERHEAD_BYTES}


def _download(data: bytes, name: str) -> Response:
    return Response(
        content=data,
        media_type=AGE_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Snapshot-Name": name},
    )


@router.post("/snapshots/export", response_class=Response)
async def export(
    body: ExportRequest,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """The encrypted snapshot as a download (`age -d` opens it with the passphrase). With `"store": true`
    a copy is also kept in the data directory (`GET /api/v1/snapshots`)."""
    data = await export_snapshot(
        ctx.db, ctx.box, body.passphrase, Actor(principal.actor, client_ip(request)), " (API)"
    )
    now = datetime.now(UTC)
    if body.store:
        name = (await asyncio.to_thread(store.write, ctx.settings, data, now)).name
    else:
        name = store.new_name(now)
    return _download(data, name)


@router.get("/snapshots", response_model=SnapshotList)
async def list_snapshots(
    _: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> SnapshotList:
    """Stored snapshots, newest first, and the schedule's status (why it is off, the last run)."""
    items = await asyncio.to_thread(store.list_files, ctx.settings)
    schedule = ctx.snapshots.status() if ctx.snapshots is not None else None
    return SnapshotList(items=items, schedule=schedule)


@router.get("/snapshots/{name}", response_class=FileResponse)
async def download_snapshot(
    name: str, _: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> FileResponse:
    path = store.path_of(ctx.settings, name)
    return FileResponse(path, media_type=AGE_MEDIA_TYPE, filename=name)


@router.post("/snapshots/import", response_model=ImportResult)
async def import_(
    request: Request,
    file: Annotated[UploadFile, File(description="the .age snapshot file")],
    passphrase: Annotated[str, Form(min_length=1, max_length=1024)],
    dry_run: Annotated[bool, Form()] = False,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> ImportResult:
    """Validate and diff the snapshot; unless `dry_run`, apply it in one transaction (the station's
    configuration becomes the snapshot's), then resync the broker and reload the running services."""
    limit = ctx.settings.snapshot_max_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise SnapshotTooLarge(f"The snapshot is larger than WAYSTATION_SNAPSHOT_MAX_BYTES ({limit} bytes).")
    imported = await import_snapshot(
        ctx.db,
        ctx.box,
        data,
        passphrase,
        dry_run=dry_run,
        actor=Actor(principal.actor, client_ip(request)),
    )
    if not dry_run:
        await reload_runtime(ctx, imported.removed_devices)
    return imported.result
