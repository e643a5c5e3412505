"""snapshot schedule bookkeeping (filled in by the snapshot work)

Revision ID: 202611222203
Revises: 202611222202
Create Date: 2026-11-22 22:03:00

Written by hand.
"""

from collections.abc import Sequence

revision: str = "202611222203"
down_revision: str | Sequence[str] | None = "202611222202"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
