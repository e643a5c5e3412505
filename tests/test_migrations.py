"""`alembic upgrade head` on an empty database equals the models: no drift (SQLite and PostgreSQL)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from waystation.config import Settings
from waystation.db import migrate
from waystation.models import Base


async def test_migrated_schema_has_no_drift_from_models(database_url: str, tmp_path) -> None:
    # `database_url` is a fresh copy of a template built by `upgrade head`.
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert set(Base.metadata.tables) <= tables


async def test_migrate_twice_is_a_no_op(database_url: str, tmp_path) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path / "d")
    await migrate(settings)
    await migrate(settings)
