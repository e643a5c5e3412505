"""merge the webhooks and dashboards branches

Revision ID: 202611222010
Revises: 202611222001, 202611222002
Create Date: 2026-11-22 20:10:00
"""

from collections.abc import Sequence

revision: str = "202611222010"
down_revision: str | Sequence[str] | None = ("202611222001", "202611222002")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
