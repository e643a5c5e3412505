"""plugin controllers, plugin instances and channel mappings

Revision ID: 202611222103
Revises: 202611222010
Create Date: 2026-11-22 21:03:00

Written by hand (a sibling of other branches on the same parent; the station upgrades to all heads).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waystation.db

revision: str = "202611222103"
down_revision: str | None = "202611222010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "controllers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=True),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_connected_at", waystation.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_controllers_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_controllers")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_controllers_token_hash")),
    )
    with op.batch_alter_table("controllers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_controllers_station_id"), ["station_id"], unique=False)

    op.create_table(
        "plugin_instances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("controller_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("plugin", sa.String(length=64), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["controller_id"],
            ["controllers.id"],
            name=op.f("fk_plugin_instances_controller_id_controllers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugin_instances")),
        sa.UniqueConstraint("controller_id", "name", name="uq_plugin_instances_controller_name"),
    )

    op.create_table(
        "channel_mappings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("controller_id", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("plugin_channel", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=True),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=True),
        sa.Column("max_value", sa.Float(), nullable=True),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["controller_id"],
            ["controllers.id"],
            name=op.f("fk_channel_mappings_controller_id_controllers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["plugin_instances.id"],
            name=op.f("fk_channel_mappings_instance_id_plugin_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_mappings")),
        sa.UniqueConstraint("controller_id", "key", name="uq_channel_mappings_controller_key"),
        sa.UniqueConstraint("instance_id", "plugin_channel", name="uq_channel_mappings_instance_channel"),
    )


def downgrade() -> None:
    op.drop_table("channel_mappings")
    op.drop_table("plugin_instances")
    with op.batch_alter_table("controllers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_controllers_station_id"))
    op.drop_table("controllers")
