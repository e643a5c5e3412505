"""Settings of the controller process (`waystation controller`): environment variables with the prefix
`WAYSTATION_CONTROLLER_`, overridden by the command line's options."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAYSTATION_CONTROLLER_", extra="ignore")

    url: str = "http://127.0.0.1:8080"  # the station's base URL
    token: str = Field(default="", repr=False)  # the controller's `wsc_…` token
    buffer_dir: Path = Path("./controller-buffer")
    # Bounds of the disk buffer; beyond either, the oldest readings are dropped (and counted).
    buffer_max_rows: int = Field(default=1_000_000, ge=100)
    buffer_max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    batch_items: int = Field(default=500, ge=1, le=500)  # readings per message (the station takes ≤ 500)
    ack_timeout_seconds: float = Field(default=15.0, gt=0)  # no ack by then: the connection is dropped
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=10.0, gt=0)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    plugin_timeout_seconds: float = Field(default=10.0, gt=0)  # one read(), write(), safe_state() …
    status_interval_seconds: float = Field(default=10.0, gt=0)  # plugin health sent to the station
    shutdown_flush_seconds: float = Field(default=5.0, ge=0)  # on stop: time to send what is buffered

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"the station URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @property
    def websocket_url(self) -> str:
        return "ws" + self.url[len("http") :] + "/api/v1/ws/controller"
