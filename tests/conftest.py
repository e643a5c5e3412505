"""Shared fixtures: a real Mosquitto, a real database (SQLite file or PostgreSQL), a real station over HTTP.

`WAYSTATION_TEST_DB=postgresql` runs the suite on the PostgreSQL server named by
`WAYSTATION_TEST_PG_URL` (default 127.0.0.1:5432, database `test`); anything else runs on SQLite.
Each test gets its own database, copied from a template migrated once per session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import (
    Broker,
    StationHandle,
    start_mosquitto,
    start_station,
)
from waystation.config import Settings
from waystation.db import migrate

PG_ADMIN_URL = os.environ.get("WAYSTATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_DB = os.environ.get("WAYSTATION_TEST_DB", "sqlite")


def pytest_report_header() -> str:
    return f"waystation test database: {TEST_DB}"


def _measured_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.args[0]) if marker and marker.args else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Long tests first: xdist hands out tests in this order, so they start at once on separate workers
    # instead of one of them starting near the end and keeping the whole run waiting.
    items.sort(key=_measured_seconds, reverse=True)
    if TEST_DB != "postgresql":
        skip = pytest.mark.skip(reason="needs WAYSTATION_TEST_DB=postgresql")
        for item in items:
            if "postgres_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


# --- databases ----------------------------------------------------------------------------------


def _pg_url(admin_url: str, dbname: str) -> str:
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated template: a SQLite file path, or a PostgreSQL database name."""
    if TEST_DB == "postgresql":
        name = f"ws_tpl_{os.getpid()}"

        async def _create() -> None:
            conn = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            url = _pg_url(PG_ADMIN_URL, name).replace("postgresql://", "postgresql+asyncpg://")
            await migrate(Settings(database_url=url, data_dir=tmp_path_factory.mktemp("tpl")))

        asyncio.run(_create())
        yield name

        async def _drop() -> None:
            conn = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(_drop())
    else:
        tpl_dir = tmp_path_factory.mktemp("sqlite-template")
        asyncio.run(migrate(Settings(data_dir=tpl_dir)))
        yield str(tpl_dir / "waystation.db")


@pytest.fixture
async def database_url(db_template: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
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
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        shutil.copy(db_template, data_dir / "waystation.db")
        yield f"sqlite+aiosqlite:///{data_dir / 'waystation.db'}"


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str, mosquitto: Broker):  # type: ignore[no-untyped-def]
    def _make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "mqtt_url": f"mqtt://127.0.0.1:{mosquitto.port}",
            "http_host": "127.0.0.1",
            "http_port": 0,
            "device_flush_interval_ms": 50,
            "presence_check_interval_seconds": 0.2,
            "mqtt_session_expiry_seconds": 30,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return _make


@pytest.fixture
async def station(settings_factory) -> AsyncIterator[StationHandle]:  # type: ignore[no-untyped-def]
    async with start_station(settings_factory()) as handle:
        yield handle
