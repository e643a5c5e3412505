"""Request and response bodies of the firmware and rollout routes (docs/ota.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from waystation.devices.schemas import DEVICE_ID_PATTERN

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
MAX_NOTES_CHARS = 2000
MAX_JOB_DEVICES = 10_000

JobStatus = Literal["running", "paused", "cancelled", "completed"]
DeviceState = Literal[
    "pending", "sent", "downloading", "applying", "succeeded", "failed", "timed_out", "cancelled"
]
DEVICE_STATES: tuple[str, ...] = (
    "pending",
    "sent",
    "downloading",
    "applying",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
)
IN_FLIGHT: tuple[str, ...] = ("sent", "downloading", "applying")
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "timed_out", "cancelled")
ACTIVE_JOB: tuple[str, ...] = ("running", "paused")

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


class FirmwareOut(BaseModel):
    id: int
    station_id: str
    device_type: str
    version: str
    notes: str
    filename: str
    size: int
    sha256: str
    created_by: str | None
    created_at: datetime


class FirmwarePage(BaseModel):
    items: list[FirmwareOut]
    next_cursor: str | None


class DownloadUrlOut(BaseModel):
    url: str
    expires_at: datetime


class JobCreate(BaseModel):
    """A rollout: `device_ids`, or `all_devices` for every enabled device of the firmware's type at its
    station (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid")
    firmware_id: int = Field(ge=1, le=2**31 - 1)
    device_ids: list[DeviceId] | None = Field(default=None, min_length=1, max_length=MAX_JOB_DEVICES)
    all_devices: bool = False
    batch_size: int = Field(default=10, ge=1, le=1000)
    # A whole number ≥ 1 is a count of failed devices in one batch; a number below 1 a share of the batch.
    failure_threshold: float = Field(default=1, gt=0, le=MAX_JOB_DEVICES)
    device_timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 86400)

    @field_validator("failure_threshold")
    @classmethod
    def _whole_count(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("a threshold of 1 or more counts devices and must be a whole number")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> JobCreate:
        if (self.device_ids is None) == (not self.all_devices):
            raise ValueError("give either 'device_ids' or 'all_devices': true")
        return self


class JobDeviceOut(BaseModel):
    device_id: str
    state: DeviceState
    batch: int | None
    progress: int | None
    error: str | None
    from_version: str | None
    request_id: str | None
    sent_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobOut(BaseModel):
    id: int
    station_id: str
    firmware_id: int | None
    device_type: str
    version: str
    sha256: str
    status: JobStatus
    batch_size: int
    failure_threshold: float
    device_timeout_seconds: float
    current_batch: int
    paused_reason: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]  # devices per state, every state present


class JobDetail(JobOut):
    devices: list[JobDeviceOut]


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


def progress_event(
    job_id: int, job_status: str, device_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The `ota.progress` bus event: job-level (no `device_id`) or one device's change."""
    return {"job_id": job_id, "job_status": job_status, "device_id": device_id, **extra}
