"""Whole snapshot operations, shared by the API, the CLI and the scheduled job: each runs in its own unit
of work (a failed import rolls back completely) and audits itself, never with the passphrase."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from waystation.audit import service as audit
from waystation.context import AppContext
from waystation.db import Database
from waystation.errors import SnapshotInvalid
from waystation.secrets_box import SecretBox
from waystation.snapshots import envelope, service
from waystation.snapshots.schemas import ImportResult
from waystation.snapshots.validation import validate
from waystation.station import service as station_service

log = logging.getLogger(__name__)


@dataclass
class Actor:
    name: str
    ip: str | None = None


@dataclass
class Imported:
    result: ImportResult
    removed_devices: list[str] = field(default_factory=list)


async def export_snapshot(
    db: Database, box: SecretBox, passphrase: str, actor: Actor, note: str = ""
) -> bytes:
    async with db.session() as session:
        entities = await service.export_entities(session, box)
        counts = ", ".join(f"{len(v)} {k}" for k, v in entities.items() if v)
        audit.record(
            session,
            actor=actor.name,
            action="snapshot.export",
            target="snapshot",
            summary=f"exported {counts}{note}"[:1000],
            ip=actor.ip,
        )
    document = envelope.new_document(entities)
    return await asyncio.to_thread(envelope.seal, document, passphrase)


async def import_snapshot(
    db: Database, box: SecretBox, data: bytes, passphrase: str, *, dry_run: bool, actor: Actor
) -> Imported:
    """Decrypt, validate, diff and (unless `dry_run`) apply in one transaction. Every failure raises a
    SNAPSHOT_* error before anything is written, or rolls the whole import back."""
    document = await asyncio.to_thread(envelope.open_document, data, passphrase)
    rows = validate(document)
    removed: list[str] = []
    try:
        async with db.session() as session:
            diff = await service.diff(session, rows, box)
            if not dry_run:
                removed = await service.apply(session, rows, box)
                audit.record(
                    session,
                    actor=actor.name,
                    action="snapshot.import",
                    target="snapshot",
                    summary=f"imported a snapshot of {document.get('created_at')}: {diff.summary()}"[:1000],
                    ip=actor.ip,
                )
    except IntegrityError as exc:
        # Validation checks keys and references; anything the database still refuses lands here.
        log.warning("snapshot import refused by the database: %s", exc.orig)
        raise SnapshotInvalid("The database refused the snapshot's rows; nothing was changed.") from exc
    result = ImportResult(
        applied=not dry_run,
        schema_version=document["schema_version"],
        created_at=document.get("created_at"),
        station_version=document.get("station_version"),
        diff=diff,
        totals=diff.total,
    )
    return Imported(result, removed)


async def reload_runtime(ctx: AppContext, removed_devices: list[str]) -> None:
    """After an import committed: the running services re-read what they cache. (The broker follows
    through the outbox's reconcile row; flows also reload on the `flow.changed` event.)"""
    async with ctx.db.session() as session:
        station = await station_service.ensure_default_station(session)
        ctx.default_station_id = station.id
    if ctx.devices is not None:
        for device_id in removed_devices:
            ctx.devices.device_removed(device_id)
        await ctx.devices.load()
    if ctx.flows is not None:
        await ctx.flows.reload()
    if ctx.rules is not None:
        await ctx.rules.reload()
    if ctx.webhooks is not None:
        await ctx.webhooks.load()
