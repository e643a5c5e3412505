"""dashboards and the operations log

Revision ID: 202611222002
Revises: 202611221854
Create Date: 2026-11-22 20:02:00

Written by hand (a sibling of other branches on the same parent; the station upgrades to all heads).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waystation.db

revision: str = "202611222002"
down_revision: str | None = "202611221854"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dashboards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("layout", _json(), nullable=False),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_dashboards_owner_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_dashboards_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboards")),
    )
    with op.batch_alter_table("dashboards", schema=None) as batch_op:
        batch_op.create_index("ix_dashboards_station_shared", ["station_id", "shared"], unique=False)
        batch_op.create_index("ix_dashboards_owner_id", ["owner_id"], unique=False)

    op.create_table(
        "dashboard_widgets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dashboard_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=120), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dashboard_id"],
            ["dashboards.id"],
            name=op.f("fk_dashboard_widgets_dashboard_id_dashboards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_widgets")),
    )
    with op.batch_alter_table("dashboard_widgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dashboard_widgets_dashboard_id"), ["dashboard_id"], unique=False)

    op.create_table(
        "log_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("related", _json(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("station_id", sa.String(length=32), nullable=True),
        sa.Column("actor", sa.String(length=120), nullable=True),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_log_entries_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_entries")),
    )
    with op.batch_alter_table("log_entries", schema=None) as batch_op:
        # Listing is newest first per station or per device; retention deletes by age.
        batch_op.create_index("ix_log_entries_station_ts", ["station_id", "ts"], unique=False)
        batch_op.create_index("ix_log_entries_device_ts", ["device_id", "ts"], unique=False)
        batch_op.create_index("ix_log_entries_ts", ["ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("log_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_log_entries_ts")
        batch_op.drop_index("ix_log_entries_device_ts")
        batch_op.drop_index("ix_log_entries_station_ts")
    op.drop_table("log_entries")

    with op.batch_alter_table("dashboard_widgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_widgets_dashboard_id"))
    op.drop_table("dashboard_widgets")

    with op.batch_alter_table("dashboards", schema=None) as batch_op:
        batch_op.drop_index("ix_dashboards_owner_id")
        batch_op.drop_index("ix_dashboards_station_shared")
    op.drop_table("dashboards")
