"""Which tables a snapshot holds, in what order, and how each row is identified.

Rows keep their primary keys, so references between them (a member's user id, a flow's MQTT server)
need no rewriting. The natural key is what a person recognises (a username, a flow code) and keys the
dry-run diff. Columns sealed with the station key travel in clear inside the encrypted file (under the
column name without `_sealed`) and are sealed again with the importing station's key.

Everything not listed here stays out of snapshots on purpose (`EXCLUDED`): telemetry and history grow
without bound, and sessions or signing keys belong to one installation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Table

from waystation.audit.models import AuditEntry
from waystation.auth.models import ApiToken, User
from waystation.broker.models import DeviceCredential
from waystation.cloud.models import CloudConfig
from waystation.controller.models import ChannelMapping, Controller, PluginInstance
from waystation.dashboards.models import Dashboard, DashboardWidget
from waystation.db import Base
from waystation.devices.models import Device, DeviceType
from waystation.flows.models import Flow, MqttServer
from waystation.provisioning.models import AgentWifi
from waystation.rules.models import Rule
from waystation.station.models import Setting, Station, StationMember
from waystation.webhooks.models import Webhook


@dataclass(frozen=True)
class TableSpec:
    entity: str  # the key under `entities` in the document
    table: Table
    natural_key: tuple[str, ...]
    unique: tuple[tuple[str, ...], ...] = ()  # unique keys besides the primary key
    sealed: tuple[str, ...] = ()  # columns sealed with the station key
    sealed_json: tuple[str, ...] = ()  # JSON columns holding a sealed envelope (secrets_box.seal_json)
    merge_only: bool = False  # rows are added, never changed or removed (the audit log)
    label: str | None = None  # a column shown beside the key in the diff
    pk: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pk", tuple(c.name for c in self.table.primary_key.columns))

    def field_of(self, column: str) -> str:
        """The document's name for a column (sealed ones travel in clear without `_sealed`)."""
        return column.removesuffix("_sealed") if column in self.sealed else column


def _t(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


# Parents before children: inserts go in this order, deletions in the reverse.
SPECS: tuple[TableSpec, ...] = (
    TableSpec("stations", _t(Station), ("id",), label="name"),
    TableSpec("users", _t(User), ("username",), unique=(("username",),)),
    TableSpec("station_members", _t(StationMember), ("station_id", "user_id"), label="role"),
    TableSpec("device_types", _t(DeviceType), ("id",), label="name"),
    TableSpec("devices", _t(Device), ("id",), unique=(("token_hash",),), label="name"),
    TableSpec(
        "device_credentials",
        _t(DeviceCredential),
        ("device_id",),
        unique=(("username",),),
        sealed=("password_sealed",),
    ),
    TableSpec("mqtt_servers", _t(MqttServer), ("name",), unique=(("name",),), sealed=("password_sealed",)),
    TableSpec("flows", _t(Flow), ("code",), unique=(("code",),), sealed=("endpoint_secret_sealed",)),
    TableSpec("rules", _t(Rule), ("id",), label="name"),
    TableSpec("webhooks", _t(Webhook), ("id",), sealed=("secret_sealed",), label="url"),
    TableSpec("dashboards", _t(Dashboard), ("id",), label="name"),
    TableSpec("dashboard_widgets", _t(DashboardWidget), ("id",), label="kind"),
    TableSpec("controllers", _t(Controller), ("id",), unique=(("token_hash",),), label="name"),
    TableSpec(
        "plugin_instances",
        _t(PluginInstance),
        ("controller_id", "name"),
        unique=(("controller_id", "name"),),
        sealed_json=("config",),
    ),
    TableSpec(
        "channel_mappings",
        _t(ChannelMapping),
        ("controller_id", "key"),
        unique=(("controller_id", "key"), ("instance_id", "plugin_channel")),
    ),
    TableSpec("api_tokens", _t(ApiToken), ("id",), unique=(("token_hash",),), label="name"),
    TableSpec("settings", _t(Setting), ("key",)),
    TableSpec("agent_wifi", _t(AgentWifi), ("id",), sealed=("password_sealed",), label="ssid"),
    TableSpec(
        "cloud_config",
        _t(CloudConfig),
        ("id",),
        sealed=("claim_secret_sealed", "station_token_sealed"),
        label="url",
    ),
    TableSpec("audit", _t(AuditEntry), ("ts", "actor", "action", "target"), merge_only=True),
)

BY_ENTITY = {spec.entity: spec for spec in SPECS}

# Settings that belong to this installation only (the first-run setup link): never exported, never removed.
LOCAL_SETTINGS = frozenset({"setup_token_hash"})

# Tables left out, and why (docs/backup.md lists them; a test checks every table is in one of the two).
EXCLUDED: dict[str, str] = {
    "refresh_tokens": "sessions end with the installation",
    "revoked_tokens": "only matter until the access tokens expire",
    "internal_signatures": "the replay store of signed internal calls belongs to one installation",
    "signing_keys": "each installation signs its own access tokens",
    "bind_tokens": "one-time and short-lived",
    "broker_outbox": "pending broker work of this installation; an import queues a full reconcile",
    "device_events": "history",
    "commands": "history",
    "channels": "created by telemetry",
    "datapoints": "telemetry",
    "rollups_1m": "telemetry",
    "rollups_1h": "telemetry",
    "experiments": "telemetry",
    "data_records": "flow data",
    "rule_firings": "history",
    "alerts": "history",
    "deliveries": "history",
    "delivery_attempts": "history",
    "firmware": "the images live in the data directory, not in the database",
    "ota_jobs": "history",
    "ota_job_devices": "history",
    "log_entries": "operations log (history)",
    "mcp_confirmations": "short-lived approvals of agents' pending writes",
}

# A user whose password hash is not in the snapshot (owners) gets this if the target has no such user:
# it matches no password, so the account needs `waystation user passwd NAME` first.
UNUSABLE_PASSWORD = "!reset-with-waystation-user-passwd"
OWNER_ROLE = "owner"
# What an owner who already exists at the target keeps of their own row.
OWNER_KEEPS = ("password_hash", "password_changed_at")
