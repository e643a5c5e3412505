"""Parsing of the device protocol over MQTT (PROTOCOLS §2).

Pure functions: a topic and a payload in, a typed message or a `Rejection` (with a reason counted in
the metrics) out. Nothing here raises on bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

TOPIC_ROOT = "station"
# Suffixes the station itself publishes under the same root; seen again on `station/#`, ignored.
OUTGOING_SUFFIXES = frozenset({"command", "handshake/ack"})
INCOMING_SUFFIXES = frozenset({"handshake", "state", "event", "heartbeat", "command/ack"})
# `ota`: firmware update progress, `data` {"state", "progress", "error"} (docs/ota.md).
EVENT_KINDS = frozenset({"device_event", "user_event", "ota"})
ACK_STATUSES = frozenset({"accepted", "applied", "failed"})

# Rejection reasons (metric label values; documented in docs/device-protocol.md).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
INVALID_FIELDS = "invalid_fields"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNKNOWN_TOPIC = "unknown_topic"
UNKNOWN_DEVICE = "unknown_device"
DEVICE_DISABLED = "device_disabled"
REJECTION_REASONS = (
    INVALID_JSON,
    NOT_AN_OBJECT,
    INVALID_FIELDS,
    PAYLOAD_TOO_LARGE,
    UNKNOWN_TOPIC,
    UNKNOWN_DEVICE,
    DEVICE_DISABLED,
)


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    station_id: str
    device_id: str
    suffix: str


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Handshake:
    type: str | None
    firmware_version: str | None
    chip: str | None


@dataclass(frozen=True, slots=True)
class StateReport:
    state: dict[str, Any]
    ts: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceEventMsg:
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    online: bool


@dataclass(frozen=True, slots=True)
class CommandAck:
    request_id: str
    status: str
    error: str | None


Message = Handshake | StateReport | DeviceEventMsg | Heartbeat | CommandAck


def parse_topic(topic: str) -> DeviceTopic | None:
    """`station/{sid}/device/{did}/{suffix…}` → parts, or None when the shape is wrong."""
    parts = topic.split("/", 4)
    if len(parts) != 5 or parts[0] != TOPIC_ROOT or parts[2] != "device" or not parts[1] or not parts[3]:
        return None
    return DeviceTopic(parts[1], parts[3], parts[4])


def _str_or_none(data: dict[str, Any], key: str, max_len: int = 64) -> str | Rejection | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        return Rejection(INVALID_FIELDS, f"{key!r} must be a string of at most {max_len} characters")
    return value


def parse_ts(value: Any) -> datetime | Rejection | None:
    """ISO 8601 (`2026-11-22T10:00:00Z`) or epoch seconds / milliseconds."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Rejection(INVALID_FIELDS, "'ts' must be an ISO 8601 string or an epoch number")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return Rejection(INVALID_FIELDS, "'ts' must be a finite positive epoch")
        seconds = value / 1000.0 if value > 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return Rejection(INVALID_FIELDS, "'ts' is out of range")
    if isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return Rejection(INVALID_FIELDS, "'ts' is not a valid ISO 8601 timestamp")
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return Rejection(INVALID_FIELDS, "'ts' must be an ISO 8601 string or an epoch number")


def decode(payload: bytes, max_bytes: int) -> dict[str, Any] | Rejection:
    if len(payload) > max_bytes:
        return Rejection(PAYLOAD_TOO_LARGE, f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return Rejection(INVALID_JSON, "payload is not valid JSON")
    if not isinstance(data, dict):
        return Rejection(NOT_AN_OBJECT, "payload must be a JSON object")
    return data


def parse_message(suffix: str, data: dict[str, Any]) -> Message | Rejection:
    """Validate a decoded payload for its topic suffix."""
    if suffix == "state":
        state = data.get("state")
        if not isinstance(state, dict):
            return Rejection(INVALID_FIELDS, "'state' must be an object")
        if any(not isinstance(k, str) or not k or len(k) > 64 or "/" in k for k in state):
            return Rejection(INVALID_FIELDS, "state keys must be 1-64 characters without '/'")
        ts = parse_ts(data.get("ts"))
        if isinstance(ts, Rejection):
            return ts
        return StateReport(state=state, ts=ts)
    if suffix == "heartbeat":
        status = data.get("status", "online")
        if not isinstance(status, str) or status not in ("online", "offline"):
            return Rejection(INVALID_FIELDS, "'status' must be 'online' or 'offline'")
        return Heartbeat(online=status == "online")
    if suffix == "event":
        kind = data.get("event")
        if not isinstance(kind, str) or kind not in EVENT_KINDS:
            return Rejection(INVALID_FIELDS, "'event' must be 'device_event', 'user_event' or 'ota'")
        payload = data.get("data", {})
        if not isinstance(payload, dict):
            return Rejection(INVALID_FIELDS, "'data' must be an object")
        return DeviceEventMsg(kind=kind, data=payload)
    if suffix == "handshake":
        fields = [
            _str_or_none(data, "type"),
            _str_or_none(data, "firmwareVersion"),
            _str_or_none(data, "chip"),
        ]
        for field in fields:
            if isinstance(field, Rejection):
                return field
        type_, fw, chip = (f if not isinstance(f, Rejection) else None for f in fields)
        return Handshake(type=type_, firmware_version=fw, chip=chip)
    if suffix == "command/ack":
        request_id = data.get("request_id")
        status = data.get("status")
        error = data.get("error")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 40:
            return Rejection(INVALID_FIELDS, "'request_id' must be a string of 1-40 characters")
        if not isinstance(status, str) or status not in ACK_STATUSES:
            return Rejection(INVALID_FIELDS, "'status' must be accepted, applied or failed")
        if error is not None and not isinstance(error, str):
            return Rejection(INVALID_FIELDS, "'error' must be a string")
        return CommandAck(request_id=request_id, status=status, error=error[:500] if error else None)
    return Rejection(UNKNOWN_TOPIC, f"unknown topic suffix {suffix!r}")


def device_topic(station_id: str, device_id: str, suffix: str) -> str:
    return f"{TOPIC_ROOT}/{station_id}/device/{device_id}/{suffix}"
