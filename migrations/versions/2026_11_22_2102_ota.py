"""firmware and OTA rollouts

Revision ID: 202611222102
Revises: 202611222010
Create Date: 2026-11-22 21:02:00

Written by hand: `firmware` (uploaded images; the bytes stay on disk), `ota_jobs` (rollouts) and
`ota_job_devices` (one row per device of a rollout).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import waystation.db

revision: str = "202611222102"
down_revision: str | None = "202611222010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "firmware",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("device_type", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("file_name", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=True),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_firmware_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware")),
        sa.UniqueConstraint("station_id", "device_type", "version", name=op.f("uq_firmware_station_id")),
    )
    with op.batch_alter_table("firmware", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_firmware_station_id"), ["station_id"], unique=False)

    op.create_table(
        "ota_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("station_id", sa.String(length=32), nullable=False),
        sa.Column("firmware_id", sa.Integer(), nullable=True),
        sa.Column("device_type", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("failure_threshold", sa.Float(), nullable=False),
        sa.Column("device_timeout_seconds", sa.Float(), nullable=False),
        sa.Column("current_batch", sa.Integer(), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=120), nullable=True),
        sa.Column("created_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", waystation.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["firmware_id"],
            ["firmware.id"],
            name=op.f("fk_ota_jobs_firmware_id_firmware"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.id"], name=op.f("fk_ota_jobs_station_id_stations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ota_jobs")),
    )
    with op.batch_alter_table("ota_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ota_jobs_firmware_id"), ["firmware_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ota_jobs_station_id"), ["station_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ota_jobs_status"), ["status"], unique=False)

    op.create_table(
        "ota_job_devices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=40), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("sent_at", waystation.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", waystation.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", waystation.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["ota_jobs.id"], name=op.f("fk_ota_job_devices_job_id_ota_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ota_job_devices")),
        sa.UniqueConstraint("job_id", "device_id", name=op.f("uq_ota_job_devices_job_id")),
    )
    with op.batch_alter_table("ota_job_devices", schema=None) as batch_op:
        batch_op.create_index("ix_ota_job_devices_job_state", ["job_id", "state"], unique=False)
        batch_op.create_index("ix_ota_job_devices_device_state", ["device_id", "state"], unique=False)
        batch_op.create_index("ix_ota_job_devices_request_id", ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ota_job_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_ota_job_devices_request_id")
        batch_op.drop_index("ix_ota_job_devices_device_state")
        batch_op.drop_index("ix_ota_job_devices_job_state")
    op.drop_table("ota_job_devices")

    with op.batch_alter_table("ota_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ota_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_ota_jobs_station_id"))
        batch_op.drop_index(batch_op.f("ix_ota_jobs_firmware_id"))
    op.drop_table("ota_jobs")

    with op.batch_alter_table("firmware", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_firmware_station_id"))
    op.drop_table("firmware")
