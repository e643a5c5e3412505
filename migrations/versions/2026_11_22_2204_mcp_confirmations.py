"""MCP confirmations: the writes agents asked for, waiting for a person

Revision ID: 202611222204
Revises: 202611222203
Create Date: 2026-11-22 22:04:00

Written by hand: `mcp_confirmations` (one row per write tool call: station, token, tool, redacted
arguments, summary, status, expiry, who decided, result or error) and an index on (station, status)
for the list of pending confirmations.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import waystation.db

revision: str = "202611222204"
down_revision: str | Sequence[str] | None = "202611222203"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:  # JSONB on PostgreSQL, JSON text on SQLite
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "mcp_confirmations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("token_name", sa.String(length=120), nullable=False),
        sa.Column("tool", sa.String(length=64), nullable=False),
        sa.Column("arguments", _json(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=120), nullable=True),
        sa.Column("decided_at", waystation.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mcp_confirmations")),
    )
    op.create_index(
        "ix_mcp_confirmations_station_status", "mcp_confirmations", ["station_id", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_mcp_confirmations_station_status", table_name="mcp_confirmations")
    op.drop_table("mcp_confirmations")
