"""Database engine, the declarative base, the unit of work, and automatic migrations.

SQLite (the embedded default) runs in WAL mode with foreign keys on; PostgreSQL goes through asyncpg.
The transaction belongs to the boundary: `Database.session()` commits or rolls back, services never
commit. Bus events collected during a unit of work are published only after it committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import JSON, DateTime, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from waystation.bus import Bus, Event
from waystation.config import Settings

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every database (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON column: JSONB on PostgreSQL, JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.ensure_data_dir()
        # LIFO: the most recent connection does most of the work, so the others' statement caches and
        # page caches stay cold and small (each SQLite connection keeps its own).
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_use_lifo=True)
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, pool_recycle=1800)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers run beside the writer; NORMAL is durable across application crashes in WAL.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


class Database:
    """Owns the engine and hands out units of work."""

    def __init__(self, settings: Settings, bus: Bus | None = None) -> None:
        self.settings = settings
        self.engine = create_engine(settings)
        self.bus = bus
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in SQLite's busy
        # handler (up to 100 ms a nap). The steady writers (ingest, device flushes, retention) queue here
        # instead, so they hand the lock over the moment it is free.
        self._write_gate = asyncio.Lock() if self.dialect == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commit on success, roll back on error, then publish its events."""
        async with self._sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
        events: list[Event] = session.info.get("events", [])
        if self.bus is not None:
            for ev in events:
                self.bus.publish(ev)
        for callback in session.info.get("after_commit", []):
            callback()

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[AsyncSession]:
        """`session()` for a steady writer: on SQLite, one such transaction at a time in this process."""
        if self._write_gate is None:
            async with self.session() as session:
                yield session
            return
        async with self._write_gate, self.session() as session:
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:  # any failure means "not ready"; the reason goes to the log only
            log.debug("database ping failed", exc_info=True)
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def in_list(values: Iterable[T]) -> list[T]:
    """Values for an `IN (...)` on a hot path, padded to the next power of two with the last value: the SQL
    text (and so each connection's cached SQLite statement) is one of a few, not one per list length."""
    items = list(values)
    if items:
        items.extend([items[-1]] * ((1 << (len(items) - 1).bit_length()) - len(items)))
    return items


def emit(session: AsyncSession, event_type: str, data: dict[str, Any], station_id: str | None = None) -> None:
    """Queue a bus event that is published only if this unit of work commits."""
    session.info.setdefault("events", []).append(Event(event_type, data, station_id))


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    session.info.setdefault("after_commit", []).append(callback)


# --- migrations --------------------------------------------------------------------------------

MIGRATION_LOCK_ID = 0x57A7_0001  # PostgreSQL advisory lock so concurrent workers migrate one at a time


def migrations_dir() -> Path:
    packaged = Path(__file__).parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "heads")  # several heads while parallel branches of work land; merged later


async def migrate(settings: Settings) -> None:
    """Bring the database schema to the newest revision (every command touching the DB calls this)."""
    engine = create_async_engine(settings.resolved_database_url, poolclass=NullPool)
    if settings.is_sqlite:
        settings.ensure_data_dir()
        _configure_sqlite(engine)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})")
            try:
                await conn.run_sync(_upgrade)
                await conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})")
    finally:
        await engine.dispose()


def migrate_sync(settings: Settings) -> None:
    asyncio.run(migrate(settings))
