"""Settings (PROTOCOLS §1): environment variables with the `WAYSTATION_` prefix, or a TOML file.

Settings are built once at the edge (CLI, tests) and passed in; nothing reads the environment later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BrokerAdmin = Literal["auto", "mosquitto-dynsec", "emqx", "emqx-http", "none"]


@dataclass(frozen=True)
class MqttEndpoint:
    """Where the station's broker is, parsed from `WAYSTATION_MQTT_URL`."""

    embedded: bool
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> MqttEndpoint:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"embedded", "mqtt", "mqtts"}:
            raise ValueError(f"MQTT URL must start with embedded://, mqtt:// or mqtts://, got {url!r}")
        default_port = 8883 if scheme == "mqtts" else 1883
        return cls(
            embedded=scheme == "embedded",
            host=parts.hostname or "127.0.0.1",
            port=parts.port or default_port,
            tls=scheme == "mqtts",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def display(self) -> str:
        """The URL without its password, safe for logs."""
        scheme = "embedded" if self.embedded else ("mqtts" if self.tls else "mqtt")
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


class Settings(BaseSettings):
    """Every tunable of a station. Field names map to `WAYSTATION_<NAME>` variables."""

    model_config = SettingsConfigDict(env_prefix="WAYSTATION_", extra="ignore", toml_file=None)

    data_dir: Path = Path("./var")
    database_url: str | None = None
    mqtt_url: str = "embedded://127.0.0.1:1883"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str | None = Field(default=None, description="Base URL people use to reach the station")
    mqtt_client_id: str | None = None
    mqtt_session_expiry_seconds: int = 7 * 24 * 3600
    broker_admin: BrokerAdmin = "auto"
    embedded_broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    cloud_url: str | None = None
    agent_token: str | None = None
    debug: bool = False

    # Devices
    heartbeat_timeout_seconds: float = 180.0
    command_ttl_seconds: float = 3600.0
    command_ack_timeout_seconds: float = 30.0
    max_payload_bytes: int = 64 * 1024
    device_flush_interval_ms: int = 250
    presence_check_interval_seconds: float = 5.0

    # Telemetry ingest and retention
    ingest_batch_rows: int = Field(default=2000, ge=1, le=50_000)
    ingest_batch_ms: int = Field(default=50, ge=1, le=10_000)
    ingest_max_queue_rows: int = Field(default=20_000, ge=100)
    raw_retention_days: float = Field(default=30, gt=0)
    rollup_1m_retention_days: float = Field(default=180, gt=0)
    rollup_1h_retention_days: float = Field(default=1825, gt=0)
    retention_interval_seconds: float = 300.0
    retention_batch_rows: int = 5000
    command_apply_timeout_seconds: float = 600.0

    # Flows and outgoing deliveries
    flows_reload_interval_seconds: float = 30.0
    flow_batch_ms: int = 100
    delivery_timeout_seconds: float = 10.0
    delivery_poll_seconds: float = 1.0
    delivery_backoff_base_seconds: float = 10.0
    delivery_max_attempts: int = Field(default=6, ge=1, le=50)

    # Auth
    access_token_minutes: int = 15
    refresh_token_days: int = 30

    # Realtime
    sse_ring_size: int = 2000
    sse_client_queue: int = 500
    sse_keepalive_seconds: float = 15.0

    # Demo fleet (`waystation run --demo`)
    demo_devices: int = 8

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        MqttEndpoint.parse(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments win, then the environment, then the TOML file given with --config.
        toml_file = _CONFIG_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    # Derived values -------------------------------------------------------------------------

    @property
    def mqtt(self) -> MqttEndpoint:
        return MqttEndpoint.parse(self.mqtt_url)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'waystation.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.http_host in {"0.0.0.0", "::"} else self.http_host
        return f"http://{host}:{self.http_port}"

    def ensure_data_dir(self) -> Path:
        """Create the data directory tree on demand and return it."""
        for sub in ("", "logs", "broker"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        return self.data_dir


_CONFIG_FILE: dict[str, Path | None] = {"path": None}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment, an optional TOML file and explicit overrides."""
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    _CONFIG_FILE["path"] = config_file
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE["path"] = None
