"""Tables of the OTA slice: stored firmware images, rollouts (`ota_jobs`) and their per-device rows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, UTCDateTime, utcnow


class Firmware(Base):
    """One uploaded image. The bytes live in `<data_dir>/firmware/<file_name>`, never in the database."""

    __tablename__ = "firmware"
    __table_args__ = (UniqueConstraint("station_id", "device_type", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), index=True)
    device_type: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    filename: Mapped[str] = mapped_column(String(255))  # as uploaded; offered again on download
    file_name: Mapped[str] = mapped_column(String(64))  # the stored file under <data_dir>/firmware/
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(120), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OtaJob(Base):
    """A rollout of one firmware to a fixed set of devices, in batches.

    `version`, `sha256` and `device_type` are copied from the firmware, so the history stays readable
    after the firmware is deleted (`firmware_id` then becomes NULL).
    """

    __tablename__ = "ota_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), index=True)
    firmware_id: Mapped[int | None] = mapped_column(
        ForeignKey("firmware.id", ondelete="SET NULL"), index=True, default=None
    )
    device_type: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # running|paused|cancelled|completed
    batch_size: Mapped[int] = mapped_column(Integer)
    # ≥ 1: that many failed devices in one batch pause the rollout; < 1: that share of the batch.
    failure_threshold: Mapped[float] = mapped_column(Float)
    device_timeout_seconds: Mapped[float] = mapped_column(Float)
    current_batch: Mapped[int] = mapped_column(Integer, default=0)
    paused_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(120), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class OtaJobDevice(Base):
    """One device of a rollout: pending → sent → downloading → applying → succeeded | failed | timed_out
    (or cancelled while still pending). `device_id` has no foreign key so the history outlives the device."""

    __tablename__ = "ota_job_devices"
    __table_args__ = (
        UniqueConstraint("job_id", "device_id"),
        Index("ix_ota_job_devices_job_state", "job_id", "state"),
        Index("ix_ota_job_devices_device_state", "device_id", "state"),
        Index("ix_ota_job_devices_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("ota_jobs.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)  # batches take pending devices in this order
    state: Mapped[str] = mapped_column(String(16), default="pending")
    batch: Mapped[int | None] = mapped_column(Integer, default=None)
    request_id: Mapped[str | None] = mapped_column(String(40), default=None)  # the ota_update command
    progress: Mapped[int | None] = mapped_column(Integer, default=None)  # 0-100, from `ota` events
    error: Mapped[str | None] = mapped_column(Text, default=None)
    from_version: Mapped[str | None] = mapped_column(String(64), default=None)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
