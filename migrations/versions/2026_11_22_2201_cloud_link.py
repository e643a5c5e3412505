"""cloud link: cloud_config and the users' cloud identity

Revision ID: 202611222201
Revises: 202611222111
Create Date: 2026-11-22 22:01:00

Written by hand: `cloud_config` (one row: cloud URL override, chip id, sealed claim secret and station
token, claimed_at, active notification channels, enabled) and `users.cloud_user_id`, nullable and unique.
The uniqueness is a unique index rather than a constraint so SQLite adds it without rebuilding `users`
(a rebuild drops the table, which with foreign keys on would cascade into every table pointing at it).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waystation.db

revision: str = "202611222201"
down_revision: str | Sequence[str] | None = "202611222111"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cloud_config",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("url", sa.String(length=500), nullable=True),
        sa.Column("chip_id", sa.String(length=64), nullable=False),
        sa.Column("claim_secret_sealed", sa.Text(), nullable=False),
        sa.Column("station_token_sealed", sa.Text(), nullable=True),
        sa.Column("claimed_at", waystation.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "active_channels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloud_config")),
    )
    op.add_column("users", sa.Column("cloud_user_id", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_users_cloud_user_id"), "users", ["cloud_user_id"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_users_cloud_user_id"), table_name="users")
    # A plain DROP COLUMN (SQLite 3.35+), not a batch rebuild of `users`: see the note above.
    op.drop_column("users", "cloud_user_id")
    op.drop_table("cloud_config")
