"""Internal-call replay store shared by every worker; audit entries filterable by target

Revision ID: 202611230900
Revises: 202611222204
Create Date: 2026-11-23 09:00:00

Written by hand: `internal_signatures` (the signatures of accepted HMAC-signed internal calls, each kept
until its `expires_at`, so a replay is refused by whichever worker receives it) with an index on
`expires_at` for the purge, and an index on `audit_log.target` for `GET /api/v1/audit?target=`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waystation.db

revision: str = "202611230900"
down_revision: str | Sequence[str] | None = "202611222204"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "internal_signatures",
        sa.Column("signature", sa.String(length=64), nullable=False),
        sa.Column("expires_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("signature", name=op.f("pk_internal_signatures")),
    )
    op.create_index(
        op.f("ix_internal_signatures_expires_at"), "internal_signatures", ["expires_at"], unique=False
    )
    op.create_index(op.f("ix_audit_log_target"), "audit_log", ["target"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_log_target"), table_name="audit_log")
    op.drop_index(op.f("ix_internal_signatures_expires_at"), table_name="internal_signatures")
    op.drop_table("internal_signatures")
