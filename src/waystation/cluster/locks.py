"""PostgreSQL advisory locks on dedicated connections: the only coordination workers share.

A session-level advisory lock lives exactly as long as the connection that took it, so a worker that
dies (kill -9, lost network) frees its locks as soon as PostgreSQL notices; nothing is home-made.
Each lock is held on its own asyncpg connection, never a pooled one, so no other work can end it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from waystation.config import Settings

# Keys of the advisory locks (one bigint namespace per database; 0x57A7_0001 is the migration lock).
BOOTSTRAP_LOCK = 0x57A7_0002
LEADER_LOCK = 0x57A7_0003
SLOT_LOCK_BASE = 0x57A7_1000  # + slot index
CONNECT_TIMEOUT = 5.0
# What a lost or refused database connection raises.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)
QUERY_TIMEOUT = 5.0


def dsn(settings: Settings) -> str:
    """The database URL as asyncpg takes it (SQLAlchemy's `+asyncpg` driver suffix removed)."""
    return settings.resolved_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def connect(settings: Settings, application_name: str) -> asyncpg.Connection:
    """A dedicated connection, named so `pg_stat_activity` (and the cluster status) tells who holds what."""
    return await asyncpg.connect(
        dsn(settings),
        timeout=CONNECT_TIMEOUT,
        server_settings={"application_name": application_name[:63]},
    )


async def try_lock(conn: asyncpg.Connection, key: int) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key, timeout=QUERY_TIMEOUT))


async def alive(conn: asyncpg.Connection) -> bool:
    """Whether the connection (and so every lock it holds) is still there."""
    if conn.is_closed():
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=QUERY_TIMEOUT)
    except DB_ERRORS:
        return False
    return True


async def close(conn: asyncpg.Connection | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 2.0)
    if not conn.is_closed():
        conn.terminate()


async def holders(conn: asyncpg.Connection, first: int, last: int) -> dict[int, str]:
    """Advisory lock key → application name of the connection holding it, for keys in [first, last]."""
    rows = await conn.fetch(
        """
        SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, a.application_name
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND ((l.classid::bigint << 32) | l.objid::bigint) BETWEEN $1 AND $2
        """,
        first,
        last,
        timeout=QUERY_TIMEOUT,
    )
    return {int(row["key"]): str(row["application_name"]) for row in rows}


@contextlib.asynccontextmanager
async def serialized(settings: Settings, key: int, name: str) -> AsyncIterator[None]:
    """Run a block in one worker at a time (start-up bootstrap); a no-op on SQLite (one process)."""
    if settings.is_sqlite:
        yield
        return
    conn = await connect(settings, name)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        yield
    finally:
        await close(conn)  # closing the connection releases the lock
