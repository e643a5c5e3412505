"""Settings (PROTOCOLS §1): environment variables with the `WAYSTATION_` prefix, or a TOML file.

Settings are built once at the edge (CLI, tests) and passed in; nothing reads the environment later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit

from limits import parse_many
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BrokerAdmin = Literal["auto", "mosquitto-dynsec", "password-file", "emqx", "emqx-http", "none"]


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

    def url(self) -> str:
        """The URL this endpoint parses from (with its password: never log it; use `display()`)."""
        scheme = "embedded" if self.embedded else ("mqtts" if self.tls else "mqtt")
        auth = ""
        if self.username:
            auth = quote(self.username, safe="")
            if self.password:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}"

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
    # What devices are told to connect to (binding, device creation); defaults to MQTT_URL's host and port.
    mqtt_public_url: str | None = None
    mqtt_session_expiry_seconds: int = 7 * 24 * 3600
    broker_admin: BrokerAdmin = "auto"
    embedded_broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    # `broker_admin=mosquitto-dynsec` with an external broker: its dynsec admin account (created with
    # `mosquitto_ctrl dynsec init`). The embedded Mosquitto gets generated accounts instead.
    broker_admin_username: str | None = None
    broker_admin_password: str | None = Field(default=None, repr=False)
    # Broker accounts a reconcile never removes, besides the station's own (comma-separated).
    broker_protected_usernames: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Path of mosquitto_dynamic_security.so for the embedded Mosquitto; looked up in usual places if unset.
    broker_dynsec_plugin: str | None = None
    # Broker sync: full reconcile period (0: only at start, after an outage and on demand), how often the
    # outbox is polled for rows written by other processes, and the retry backoff.
    broker_reconcile_interval_seconds: float = Field(default=3600.0, ge=0)
    broker_sync_poll_seconds: float = Field(default=5.0, gt=0)
    broker_sync_backoff_base_seconds: float = Field(default=1.0, gt=0)
    broker_sync_backoff_max_seconds: float = Field(default=60.0, gt=0)
    # EMQX 5 management API (`broker_admin=emqx`): base URL such as http://emqx:18083, an API key and secret.
    emqx_api_url: str | None = None
    emqx_api_key: str | None = None
    emqx_api_secret: str | None = None
    emqx_authenticator_id: str = "password_based:built_in_database"
    # `broker_admin=emqx-http`: how long an authentication or authorization answer is reused.
    emqx_auth_cache_seconds: float = Field(default=60.0, ge=0, le=3600)
    cloud_url: str | None = None
    # Cloud link (docs/cloud.md): WebSocket pings (no pong by the next ping ends the connection), reconnect
    # backoff with jitter, JSON-RPC call timeout, the offline notification queue and its replay rate.
    cloud_ping_interval_seconds: float = Field(default=30.0, gt=0)
    cloud_backoff_initial_seconds: float = Field(default=2.0, gt=0)
    cloud_backoff_max_seconds: float = Field(default=60.0, gt=0)
    cloud_backoff_jitter: float = Field(default=0.2, ge=0, lt=1)
    cloud_rpc_timeout_seconds: float = Field(default=10.0, gt=0)
    cloud_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    cloud_replay_rate: float = Field(default=50.0, gt=0)  # notifications per second
    agent_token: str | None = None
    # Secret of HMAC-signed internal calls and broker callbacks; generated into keys/internal.key if unset.
    internal_secret: str | None = None
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
    # Operations log (`GET /api/v1/log`): how long entries are kept, how often and in what batches they go.
    log_retention_days: float = Field(default=90, gt=0)
    log_retention_interval_seconds: float = Field(default=3600.0, gt=0)
    log_retention_batch_rows: int = Field(default=1000, ge=1, le=100_000)
    command_apply_timeout_seconds: float = 600.0

    # Flows and outgoing deliveries
    flows_reload_interval_seconds: float = 30.0
    flow_batch_ms: int = 100
    delivery_timeout_seconds: float = 10.0
    delivery_poll_seconds: float = 1.0
    delivery_backoff_base_seconds: float = 10.0
    delivery_max_attempts: int = Field(default=6, ge=1, le=50)
    # Hosts outgoing deliveries (webhooks, flow endpoints) may go to: fnmatch patterns, comma-separated
    # ("hooks.example.com,*.internal"); empty allows any host.
    delivery_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Bus events waiting to become webhook deliveries; beyond this the oldest are dropped (logged, counted).
    webhook_queue_size: int = Field(default=10_000, ge=100, le=1_000_000)

    # Plugin controllers (docs/plugins.md): how long `POST /channels/{id}/write` waits for the plugin (a bit
    # longer than the controller's own plugin timeout, so its clearer error arrives first).
    controller_write_timeout_seconds: float = Field(default=15.0, gt=0, le=300)

    # Rules (docs/rules.md): bus events waiting for evaluation (beyond this the oldest are dropped, logged
    # and counted), and the safety-net reload for changes made on other workers.
    rules_queue_size: int = Field(default=10_000, ge=100, le=1_000_000)
    rules_reload_interval_seconds: float = Field(default=30.0, gt=0)

    # Auth
    access_token_minutes: int = Field(default=15, ge=1, le=1440)
    signing_key_rotation_days: float = Field(default=30, gt=0)
    refresh_token_days: int = 30

    # Abuse limits (docs/security.md#limits). Rates use the `limits` notation ("10/minute", several joined
    # with ";"); an empty rate turns that limit off. Counted per client address unless noted.
    rate_limit_enabled: bool = True
    # Where the counters live: a `limits` storage URI. "memory://" is per process; several workers need a
    # shared one ("redis://host:6379", with `pip install limits[redis]`).
    rate_limit_storage: str = "memory://"
    rate_limit_login_ip: str = "10/minute"  # every login attempt (and password change) from one address
    rate_limit_login_username: str = "5/minute"  # every login attempt for one username, from anywhere
    rate_limit_setup: str = "10/minute"
    rate_limit_refresh: str = "30/minute"
    rate_limit_bind: str = "10/minute"
    rate_limit_token_create: str = "20/minute"  # per caller
    rate_limit_device_token: str = "30/minute"  # per caller
    # Reverse proxies (addresses or CIDR ranges, comma-separated) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; without one, the client address is the TCP peer.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Largest request body; `max_body_bytes_by_path` maps path patterns (fnmatch, e.g.
    # "/api/v1/firmware*") to their own limit, the longest matching pattern winning.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_body_bytes_by_path: dict[str, int] = Field(default_factory=dict)

    # Firmware and OTA rollouts (docs/ota.md)
    firmware_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    firmware_url_ttl_seconds: float = Field(default=300.0, gt=0, le=86_400)  # signed download links
    ota_device_timeout_seconds: float = Field(default=900.0, gt=0)  # command sent → new version reported
    ota_check_interval_seconds: float = Field(default=1.0, gt=0)  # timeouts and next batches

    # Snapshots (docs/backup.md): scheduled ones need a passphrase file; 0 hours turns them off.
    snapshot_interval_hours: float = Field(default=24.0, ge=0)
    snapshot_keep: int = Field(default=7, ge=1, le=1000)
    snapshot_passphrase_file: Path | None = None
    snapshot_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # largest file import accepts

    # BLE provisioning (docs/provisioning.md): the bridge child runs when enabled (or simulated).
    ble_enabled: bool = False
    ble_simulate: bool = False  # the bridge's fake radio (`ble-bridge --simulate`); implies enabled
    ble_service_uuid: str = "b8a0a000-5753-4e90-8d33-7761797374a1"
    ble_characteristic_uuid: str = "b8a0a001-5753-4e90-8d33-7761797374a1"
    ble_bridge_command: str | None = None  # shell-style; default: this Python's `-m waystation ble-bridge`
    ble_restart_backoff_base_seconds: float = Field(default=1.0, gt=0)
    ble_restart_backoff_max_seconds: float = Field(default=30.0, gt=0)
    ble_write_timeout_seconds: float = Field(default=30.0, gt=0)
    ble_candidate_ttl_seconds: float = Field(default=30.0, gt=0)  # unseen this long: candidate lost
    provisioning_join_timeout_seconds: float = Field(default=60.0, gt=0)

    # Realtime
    sse_ring_size: int = 2000
    sse_client_queue: int = 500
    sse_keepalive_seconds: float = 15.0
    # `system.status` events (while a stream listens) and the backlog gauges refresh this often.
    system_status_interval_seconds: float = Field(default=15.0, gt=0, le=3600)
    # Open event streams and WebSockets re-check their caller's token this often (and at its expiry).
    stream_reauth_seconds: float = Field(default=30.0, gt=0, le=3600)

    # MCP (docs/mcp.md): how long an agent's write waits for a person, and how long a tool call holds on.
    mcp_confirmation_ttl_seconds: float = Field(default=600.0, gt=0, le=86_400)
    mcp_confirmation_wait_seconds: float = Field(default=60.0, ge=0, le=600)
    mcp_confirmation_poll_seconds: float = Field(default=0.5, gt=0, le=10)

    # Several workers (docs/scaling.md): "on" (set by `run --workers N`, or by hand on N machines) makes
    # this process a worker on PostgreSQL with an external MQTT 5 broker: a worker slot, shared device
    # subscriptions, the bus bridged; "off" is one process. Leadership (singleton jobs) is tried this
    # often; a gone worker's MQTT session is adopted after its slot stayed free this long.
    cluster: Literal["off", "on"] = "off"
    cluster_max_workers: int = Field(default=64, ge=1, le=1024)
    cluster_leader_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    cluster_adopt_after_seconds: float = Field(default=5.0, ge=0, le=3600)
    cluster_bridge_queue: int = Field(default=10_000, ge=100, le=1_000_000)

    # Demo fleet (`waystation run --demo`)
    demo_devices: int = 8

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        MqttEndpoint.parse(value)
        return value

    @field_validator(
        "rate_limit_login_ip",
        "rate_limit_login_username",
        "rate_limit_setup",
        "rate_limit_refresh",
        "rate_limit_bind",
        "rate_limit_token_create",
        "rate_limit_device_token",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        if value.strip():
            parse_many(value)  # raises ValueError with the offending text
        return value.strip()

    @field_validator("trusted_proxies", "broker_protected_usernames", "delivery_allowed_hosts", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
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
    def mqtt_url_configured(self) -> bool:
        """True when `WAYSTATION_MQTT_URL` was given (environment, TOML or arguments), not defaulted."""
        return "mqtt_url" in self.model_fields_set

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
