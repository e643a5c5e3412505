"""A second fresh database and data directory (the import target), and a station populated with one of
every snapshot entity through the public API."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import PG_ADMIN_URL, TEST_DB, _pg_url
from tests.helpers import Broker
from waystation.config import Settings


@pytest.fixture
async def target_database_url(db_template: str, tmp_path: Path) -> AsyncIterator[str]:
    """Like `database_url`, for a second data directory (`target/`)."""
    if TEST_DB == "postgresql":
        name = f"ws_t_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{db_template}"')
        finally:
            await conn.close()
        yield _pg_url(PG_ADMIN_URL, name).replace("postgresql://", "postgresql+asyncpg://")
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    else:
        data_dir = tmp_path / "target"
        data_dir.mkdir(exist_ok=True)
        shutil.copy(db_template, data_dir / "waystation.db")
        yield f"sqlite+aiosqlite:///{data_dir / 'waystation.db'}"


@pytest.fixture
def target_settings(
    settings_factory: Callable[..., Settings], tmp_path: Path, target_database_url: str, mosquitto: Broker
) -> Callable[..., Settings]:
    def _make(**overrides: Any) -> Settings:
        return settings_factory(data_dir=tmp_path / "target", database_url=target_database_url, **overrides)

    return _make
