"""`waystation snapshot export|import` (PROTOCOLS §1, docs/backup.md): against the configured database
directly, migrated first like every command. An import while the station runs reaches the broker through
the outbox (its sync worker picks the reconcile row up); the running services see it after a restart."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from waystation.snapshots.schemas import MIN_PASSPHRASE, SnapshotDiff

snapshot_app = typer.Typer(help="Export and import encrypted snapshots.", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
PassphraseStdin = Annotated[
    bool, typer.Option("--passphrase-stdin", help="Read the passphrase from standard input (first line)")
]


def _passphrase(from_stdin: bool, confirm: bool) -> str:
    from waystation.cli import fail

    if from_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        secret = str(typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm))
    if not secret:
        fail("no passphrase given")
    if confirm and len(secret) < MIN_PASSPHRASE:
        fail(f"use a passphrase of at least {MIN_PASSPHRASE} characters")
    return secret


def _print_diff(diff: SnapshotDiff) -> None:
    from waystation.cli import console

    table = Table("entity", "added", "changed", "removed", "unchanged")
    for name, entity in diff.entities.items():
        counts = entity.counts
        table.add_row(
            name, str(counts["added"]), str(counts["changed"]), str(counts["removed"]), str(entity.unchanged)
        )
    console.print(table)


@snapshot_app.command("export")
def export(file: Path, passphrase_stdin: PassphraseStdin = False, config: ConfigOption = None) -> None:
    """Write an encrypted snapshot of every configuration and credential entity to FILE."""
    from waystation.cli import console, fail, run_db_task, settings_from
    from waystation.db import Database
    from waystation.secrets_box import SecretBox
    from waystation.snapshots.operations import Actor, export_snapshot

    settings = settings_from(config)
    secret = _passphrase(passphrase_stdin, confirm=True)

    async def _export() -> bytes:
        db = Database(settings)
        try:
            return await export_snapshot(db, SecretBox(settings.data_dir), secret, Actor("cli"), " (CLI)")
        finally:
            await db.dispose()

    data = run_db_task(settings, _export)
    try:
        file.write_bytes(data)
        file.chmod(0o600)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror}")
    console.print(f"snapshot written to {file} ({len(data)} bytes); `age -d {file}` opens it")


@snapshot_app.command("import")
def import_(
    file: Path,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would change")] = False,
    passphrase_stdin: PassphraseStdin = False,
    config: ConfigOption = None,
) -> None:
    """Import FILE: the configuration becomes the snapshot's (see docs/backup.md)."""
    from waystation.cli import console, fail, run_db_task, settings_from
    from waystation.db import Database
    from waystation.errors import SnapshotInvalid
    from waystation.secrets_box import SecretBox
    from waystation.snapshots.operations import Actor, Imported, import_snapshot

    settings = settings_from(config)
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    if len(data) > settings.snapshot_max_bytes:
        fail(f"{file} is larger than WAYSTATION_SNAPSHOT_MAX_BYTES ({settings.snapshot_max_bytes} bytes)")
    secret = _passphrase(passphrase_stdin, confirm=False)

    async def _import() -> Imported:
        db = Database(settings)
        try:
            box = SecretBox(settings.data_dir)
            return await import_snapshot(db, box, data, secret, dry_run=dry_run, actor=Actor("cli"))
        except SnapshotInvalid as exc:
            for problem in exc.extra.get("errors", []):
                where = " ".join(str(problem[k]) for k in ("entity", "index", "field") if k in problem)
                console.print(f"  {where}: {problem['message']}")
            raise
        finally:
            await db.dispose()

    imported = run_db_task(settings, _import)
    _print_diff(imported.result.diff)
    if dry_run:
        console.print("dry run: nothing was changed")
    else:
        console.print(
            f"snapshot imported ({imported.result.diff.summary()}). A running station resyncs its broker "
            "from the outbox; restart it so every service reloads."
        )
