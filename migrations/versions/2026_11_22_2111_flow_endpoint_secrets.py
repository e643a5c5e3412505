"""flow endpoint secrets

Revision ID: 202611222111
Revises: 202611222110
Create Date: 2026-11-22 21:11:00

Written by hand: `flows.endpoint_secret_sealed`, the sealed Standard Webhooks secret that signs a
POST_ENDPOINT flow's deliveries. Nullable: existing flows have none and stay unsigned until one is
rotated in.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "202611222111"
down_revision: str | Sequence[str] | None = "202611222110"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("endpoint_secret_sealed", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flows", schema=None) as batch_op:
        batch_op.drop_column("endpoint_secret_sealed")
