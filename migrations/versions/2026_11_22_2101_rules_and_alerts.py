"""rules, rule firings and alerts

Revision ID: 202611222101
Revises: 202611222010
Create Date: 2026-11-22 21:01:00

Written by hand (a sibling of other branches on the same parent; the station upgrades to all heads).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waystation.db

revision: str = "202611222101"
down_revision: str | None = "202611222010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _utc() -> waystation.db.UTCDateTime:
    return waystation.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("operator", sa.String(length=16), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("threshold_high", sa.Float(), nullable=True),
        sa.Column("for_seconds", sa.Float(), nullable=False),
        sa.Column("cooldown_seconds", sa.Float(), nullable=False),
        sa.Column("actions", _json(), nullable=False),
        sa.Column("last_fired_at", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_rules_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules")),
    )
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.create_index("ix_rules_station_id", ["station_id"], unique=False)

    op.create_table(
        "rule_firings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("ts", _utc(), nullable=False),
        sa.Column("reading_ts", _utc(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("channel", sa.String(length=200), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcomes", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rules.id"], name=op.f("fk_rule_firings_rule_id_rules"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_rule_firings_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rule_firings")),
    )
    with op.batch_alter_table("rule_firings", schema=None) as batch_op:
        batch_op.create_index("ix_rule_firings_rule_id", ["rule_id", "id"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("rule_name", sa.String(length=120), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("channel", sa.String(length=200), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("raised_at", _utc(), nullable=False),
        sa.Column("last_raised_at", _utc(), nullable=False),
        sa.Column("acknowledged_at", _utc(), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=120), nullable=True),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rules.id"], name=op.f("fk_alerts_rule_id_rules"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_alerts_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_station_status", ["station_id", "status"], unique=False)
        batch_op.create_index("ix_alerts_rule_status", ["rule_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_rule_status")
        batch_op.drop_index("ix_alerts_station_status")
    op.drop_table("alerts")

    with op.batch_alter_table("rule_firings", schema=None) as batch_op:
        batch_op.drop_index("ix_rule_firings_rule_id")
    op.drop_table("rule_firings")

    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.drop_index("ix_rules_station_id")
    op.drop_table("rules")
