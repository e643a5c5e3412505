"""merge the rules, OTA and plugin-controller branches

Revision ID: 202611222110
Revises: 202611222101, 202611222102, 202611222103
Create Date: 2026-11-22 21:10:00
"""

from collections.abc import Sequence

revision: str = "202611222110"
down_revision: str | Sequence[str] | None = ("202611222101", "202611222102", "202611222103")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
