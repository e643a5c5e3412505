"""agent Wi-Fi credentials for BLE provisioning

Revision ID: 202611222202
Revises: 202611222201
Create Date: 2026-11-22 22:02:00

Written by hand: `agent_wifi`, one row holding the SSID and the sealed password the station agent set
(`PUT /api/v1/agent/wifi`), written to devices during BLE provisioning.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waystation.db

revision: str = "202611222202"
down_revision: str | Sequence[str] | None = "202611222201"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_wifi",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ssid", sa.String(length=64), nullable=False),
        sa.Column("password_sealed", sa.Text(), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_wifi")),
    )


def downgrade() -> None:
    op.drop_table("agent_wifi")
