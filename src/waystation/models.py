"""Imports every slice's tables so `Base.metadata` is complete (Alembic and tests use it)."""

from waystation.audit.models import AuditEntry
from waystation.auth.models import ApiToken, RefreshToken, RevokedToken, SeenSignature, SigningKey, User
from waystation.broker.models import BrokerOutbox, DeviceCredential
from waystation.cloud.models import CloudConfig
from waystation.controller.models import ChannelMapping, Controller, PluginInstance
from waystation.dashboards.models import Dashboard, DashboardWidget
from waystation.db import Base
from waystation.devices.models import Command, Device, DeviceEvent, DeviceType
from waystation.flows.models import DataRecord, Flow, MqttServer
from waystation.mcp.models import McpConfirmation
from waystation.oplog.models import LogEntry
from waystation.ota.models import Firmware, OtaJob, OtaJobDevice
from waystation.provisioning.models import AgentWifi, BindToken
from waystation.rules.models import Alert, Rule, RuleFiring
from waystation.station.models import Setting, Station, StationMember
from waystation.telemetry.models import Channel, Datapoint, Experiment, Rollup1h, Rollup1m
from waystation.webhooks.models import Delivery, DeliveryAttempt, Webhook

__all__ = [
    "AgentWifi",
    "Alert",
    "ApiToken",
    "AuditEntry",
    "Base",
    "BindToken",
    "BrokerOutbox",
    "Channel",
    "ChannelMapping",
    "CloudConfig",
    "Command",
    "Controller",
    "Dashboard",
    "DashboardWidget",
    "DataRecord",
    "Datapoint",
    "Delivery",
    "DeliveryAttempt",
    "Device",
    "DeviceCredential",
    "DeviceEvent",
    "DeviceType",
    "Experiment",
    "Firmware",
    "Flow",
    "LogEntry",
    "McpConfirmation",
    "MqttServer",
    "OtaJob",
    "OtaJobDevice",
    "PluginInstance",
    "RefreshToken",
    "RevokedToken",
    "Rollup1h",
    "Rollup1m",
    "Rule",
    "RuleFiring",
    "SeenSignature",
    "Setting",
    "SigningKey",
    "Station",
    "StationMember",
    "User",
    "Webhook",
]
