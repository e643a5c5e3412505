"""Snapshot files kept in `<data_dir>/snapshots/`: named by their UTC time, listed newest first, pruned
to the newest `keep`. Only names this module makes are ever read back, so a name from a URL cannot
point anywhere else."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from waystation.config import Settings
from waystation.errors import SnapshotNotFound
from waystation.snapshots.schemas import SnapshotFile

NAME = re.compile(r"^waystation-(\d{8}T\d{6}Z)(?:-(\d+))?\.age$")


def snapshot_dir(settings: Settings) -> Path:
    return settings.data_dir / "snapshots"


def new_name(when: datetime) -> str:
    return f"waystation-{when.astimezone(UTC):%Y%m%dT%H%M%SZ}.age"


def write(settings: Settings, data: bytes, when: datetime | None = None) -> Path:
    """Write atomically (temp file, then rename) with owner-only permissions; a second snapshot in the
    same second gets a counter."""
    folder = snapshot_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    name = new_name(when or datetime.now(UTC))
    path = folder / name
    counter = 1
    while path.exists():
        path = folder / name.replace(".age", f"-{counter}.age")
        counter += 1
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    temp.replace(path)
    return path


def _stamp(name: str) -> tuple[datetime, int] | None:
    match = NAME.match(name)
    if match is None:
        return None
    when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return when, int(match.group(2) or 0)


def list_files(settings: Settings) -> list[SnapshotFile]:
    folder = snapshot_dir(settings)
    if not folder.is_dir():
        return []
    found: list[tuple[tuple[datetime, int], SnapshotFile]] = []
    for path in folder.iterdir():
        stamp = _stamp(path.name)
        if stamp is None or not path.is_file():
            continue
        found.append((stamp, SnapshotFile(name=path.name, size=path.stat().st_size, created_at=stamp[0])))
    found.sort(key=lambda item: item[0], reverse=True)
    return [item for _, item in found]


def path_of(settings: Settings, name: str) -> Path:
    path = snapshot_dir(settings) / name
    if NAME.match(name) is None or not path.is_file():
        raise SnapshotNotFound(f"No snapshot {name!r}.")
    return path


def prune(settings: Settings, keep: int) -> list[str]:
    """Delete all but the newest `keep` snapshots; returns the deleted names."""
    gone: list[str] = []
    for item in list_files(settings)[keep:]:
        (snapshot_dir(settings) / item.name).unlink(missing_ok=True)
        gone.append(item.name)
    return gone
