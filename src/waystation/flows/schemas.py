"""Request and response bodies of the flow and MQTT-server routes (PROTOCOLS §4, §12)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from waystation.security.params import MAX_ROW_ID

FLOW_CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Action = Literal["STORE_DB", "POST_ENDPOINT"]


class FlowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=FLOW_CODE_PATTERN)
    topic: str = Field(min_length=1, max_length=512)
    payload_schema: dict[str, Any] = Field(default_factory=dict)
    action: Action
    endpoint_url: str | None = Field(default=None, max_length=2048)
    mqtt_server_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID)
    enabled: bool = True


class FlowUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str | None = Field(default=None, min_length=1, max_length=512)
    payload_schema: dict[str, Any] | None = None
    action: Action | None = None
    endpoint_url: str | None = Field(default=None, max_length=2048)
    mqtt_server_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID)
    enabled: bool | None = None


class FlowStats(BaseModel):
    accepted: int
    rejected: int
    last_error: str | None


class FlowOut(BaseModel):
    id: int
    code: str
    topic: str
    payload_schema: dict[str, Any]
    action: Action
    endpoint_url: str | None
    mqtt_server_id: int | None
    enabled: bool
    last_msg_id: int
    stats: FlowStats
    has_endpoint_secret: bool  # whether deliveries are signed; only the call that made the secret shows it
    created_at: datetime
    updated_at: datetime


class FlowWithSecret(FlowOut):
    """The answer of a create or PATCH that made a new endpoint secret, and of rotate-secret: the only
    time the secret is shown."""

    endpoint_secret: str


class MqttServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False
    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=1024)
    client_id: str | None = Field(default=None, max_length=120)
    is_default: bool = False
    enabled: bool = True


class MqttServerUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool | None = None
    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=1024)
    client_id: str | None = Field(default=None, max_length=120)
    is_default: bool | None = None
    enabled: bool | None = None


class MqttServerOut(BaseModel):
    id: int
    name: str
    host: str
    port: int
    tls: bool
    username: str | None
    has_password: bool
    client_id: str | None
    is_default: bool
    enabled: bool
    created_at: datetime
