"""Which database failures a client sees as `503 DATABASE_UNAVAILABLE` or `507 STORAGE_FULL`, and which
stay `500 INTERNAL_ERROR`: the mapping of `errors.database_fault`, through the real handlers, with a
real locked SQLite file and the errors the drivers raise for the rest."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine

from waystation.errors import install_error_handlers


class DriverError(Exception):
    """What asyncpg's errors look like to SQLAlchemy: an exception with a SQLSTATE."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _raise(exc: BaseException) -> None:
    raise exc


FAILURES: dict[str, tuple[BaseException, int, str]] = {
    "refused": (ConnectionRefusedError(111, "Connect call failed"), 503, "DATABASE_UNAVAILABLE"),
    "pool-timeout": (PoolTimeout("QueuePool limit reached"), 503, "DATABASE_UNAVAILABLE"),
    "admin-shutdown": (
        DBAPIError("SELECT 1", {}, DriverError("terminating connection", "57P01")),
        503,
        "DATABASE_UNAVAILABLE",
    ),
    "starting-up": (
        DBAPIError("SELECT 1", {}, DriverError("the database system is starting up", "57P03")),
        503,
        "DATABASE_UNAVAILABLE",
    ),
    "cut": (
        DBAPIError("SELECT 1", {}, DriverError("connection was closed", ""), connection_invalidated=True),
        503,
        "DATABASE_UNAVAILABLE",
    ),
    "disk-io": (
        OperationalError("INSERT", {}, sqlite3.OperationalError("disk I/O error")),
        503,
        "DATABASE_UNAVAILABLE",
    ),
    "sqlite-full": (
        OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")),
        507,
        "STORAGE_FULL",
    ),
    "pg-disk-full": (
        DBAPIError("INSERT", {}, DriverError("could not extend file", "53100")),
        507,
        "STORAGE_FULL",
    ),
    "nul-in-text": (
        DBAPIError("INSERT", {}, DriverError("invalid byte sequence", "22021")),
        422,
        "VALIDATION_FAILED",
    ),
    "missing-table": (
        DBAPIError("SELECT", {}, DriverError('relation "x" does not exist', "42P01")),
        500,
        "INTERNAL_ERROR",
    ),
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    db_file = tmp_path / "locked.db"
    sqlite3.connect(db_file).execute("CREATE TABLE t (x INTEGER)").connection.commit()

    @app.get("/fail/{name}")
    async def fail(name: str) -> None:
        _raise(FAILURES[name][0])

    @app.post("/write")
    async def locked() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{db_file}", connect_args={"timeout": 0.1})
        try:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
        finally:
            await engine.dispose()

    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process keeps the file locked past the busy timeout
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://station") as c:
            yield c
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("name", list(FAILURES))
async def test_database_failures_map_to_stable_codes(client: httpx.AsyncClient, name: str) -> None:
    _, status, code = FAILURES[name]
    r = await client.get(f"/fail/{name}")
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "SELECT" not in r.text and "INSERT" not in r.text and "relation" not in r.text
    if code == "DATABASE_UNAVAILABLE":
        assert r.headers["Retry-After"] == "5" and r.json()["retry_after"] == 5


async def test_a_sqlite_file_locked_too_long_is_unavailable_not_an_internal_error(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/write")
    assert (r.status_code, r.json()["code"]) == (503, "DATABASE_UNAVAILABLE"), r.text
    assert "database is locked" not in r.text
