"""Pydantic I/O of the cloud routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from waystation.cloud.service import url_allowed


class ClaimRequest(BaseModel):
    # Overrides WAYSTATION_CLOUD_URL for this station (kept in cloud_config); omit to keep the current one.
    url: str | None = Field(default=None, max_length=500, pattern=r"^wss?://[^\s]+$")

    @field_validator("url")
    @classmethod
    def _secure(cls, url: str | None) -> str | None:
        if url is not None and not url_allowed(url):
            raise ValueError("use wss:// (plain ws:// only for a cloud on this machine: 127.0.0.1, ::1)")
        return url


class CloudStatusOut(BaseModel):
    state: Literal["disabled", "connecting", "claiming", "authenticating", "connected", "backoff"]
    enabled: bool
    url: str | None
    claimed: bool
    claimed_at: str | None
    last_error: str | None
    connected_since: str | None
    next_retry_at: str | None
    queue_depth: int
    queue_overflow: int
    active_channels: list[str]
    # Installation owners and admins only: what the owner enters in the cloud app to claim the station.
    chip_id: str | None = None
    claim_secret: str | None = None
