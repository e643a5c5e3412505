"""The bridge's stdio protocol (PROTOCOLS §8): one JSON object per line, each `{"event": name, …fields}`.

The station sends `start_scan`, `stop_scan` and `connect_and_write`; the bridge answers `ready`,
`scan_started`, `scan_stopped`, `discovered`, `write_result` and, for a line it cannot use, `error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# What the station may send; the bridge rejects anything else with an `error` event.
COMMANDS = ("start_scan", "stop_scan", "connect_and_write")
MAX_LINE_BYTES = 64 * 1024
MAX_ID_CHARS = 64


class BadMessage(ValueError):
    """A line that is not a usable message; its text is safe to report (it never quotes the line)."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advertisement of a provisionable device, as the bridge reports it in `discovered`."""

    address: str
    name: str | None
    rssi: int
    service_uuids: list[str] = field(default_factory=list)
    service_data: dict[str, str] = field(default_factory=dict)  # uuid → hex of the bytes

    def event(self) -> dict[str, Any]:
        return {
            "event": "discovered",
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "service_uuids": self.service_uuids,
            "service_data": self.service_data,
        }


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def decode(line: bytes | str) -> dict[str, Any]:
    """Parse one line into a message with a string `event`; `BadMessage` otherwise."""
    if len(line) > MAX_LINE_BYTES:
        raise BadMessage(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadMessage("a message must be a JSON object")
    name = message.get("event")
    if not isinstance(name, str) or not name:
        raise BadMessage('a message needs a string "event" member')
    return message


def text_field(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadMessage(f"{message['event']} needs a non-empty string {key!r}")
    return value.strip()


def write_echo(message: dict[str, Any]) -> dict[str, Any]:
    """`{"id": …}` to echo in `write_result` when `connect_and_write` carried a usable `id` (a string of
    at most 64 characters), so the station can match the answer to this write and no other."""
    write_id = message.get("id")
    if isinstance(write_id, str) and 0 < len(write_id) <= MAX_ID_CHARS:
        return {"id": write_id}
    return {}


def payload_bytes(message: dict[str, Any]) -> bytes:
    """The bytes to write: a JSON object is sent compact, a string as its UTF-8."""
    payload = message.get("payload")
    if isinstance(payload, dict):
        return orjson.dumps(payload)
    if isinstance(payload, str) and payload:
        return payload.encode()
    raise BadMessage("connect_and_write needs a payload (a JSON object or a string)")
