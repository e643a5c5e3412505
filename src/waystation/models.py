"""Imports every slice's tables so `Base.metadata` is complete (Alembic and tests use it)."""

from waystation.audit.models import AuditEntry
from waystation.auth.models import ApiToken, RefreshToken, User
from waystation.db import Base
from waystation.devices.models import Command, Device, DeviceEvent, DeviceType
from waystation.flows.models import DataRecord, Flow, MqttServer
from waystation.station.models import Setting, Station
from waystation.telemetry.models import Channel, Datapoint, Experiment, Rollup1h, Rollup1m
from waystation.webhooks.models import Delivery, DeliveryAttempt

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "Channel",
    "Command",
    "DataRecord",
    "Datapoint",
    "Delivery",
    "DeliveryAttempt",
    "Device",
    "DeviceEvent",
    "DeviceType",
    "Experiment",
    "Flow",
    "MqttServer",
    "RefreshToken",
    "Rollup1h",
    "Rollup1m",
    "Setting",
    "Station",
    "User",
]
