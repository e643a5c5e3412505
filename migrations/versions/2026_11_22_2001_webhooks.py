"""webhooks

Revision ID: 202611222001
Revises: 202611221854
Create Date: 2026-11-22 20:01:00

Written by hand: the `webhooks` table, and on `deliveries` the endpoint a webhook delivery belongs to
and the type of the event it carries.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waystation.db

revision: str = "202611222001"
down_revision: str | None = "202611221854"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=True),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column(
            "event_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_webhooks_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhooks_station_id"), ["station_id"], unique=False)

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("event_type", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_deliveries_webhook", ["webhook_id", "id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_deliveries_webhook_id_webhooks"),
            "webhooks",
            ["webhook_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_deliveries_webhook_id_webhooks"), type_="foreignkey")
        batch_op.drop_index("ix_deliveries_webhook")
        batch_op.drop_column("event_type")
        batch_op.drop_column("webhook_id")

    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhooks_station_id"))

    op.drop_table("webhooks")
