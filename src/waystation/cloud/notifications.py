"""Bus events → cloud notifications (PROTOCOLS §7), and the bounded queue they wait in.

Every notification goes through one queue, sent in order by the link at most `cloud_replay_rate` per
second: while the link is down they pile up there and are replayed in order after `auth_ok`. The queue
is bounded (`cloud_queue_size`); on overflow the oldest is dropped and counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from waystation.bus import Event

#: bus event type → notification name, and the payload fields that go out (never anything else).
CHANNELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "device.state_changed": ("device.stateChanged", ("state", "ts")),
    "device.online": ("device.online", ()),
    "device.offline": ("device.offline", ()),
    "device.event": ("device.event", ("kind", "data", "ts")),
    "device.command_sent": ("device.commandSent", ("request_id", "action")),
}
NOTIFICATION_NAMES: tuple[str, ...] = tuple(name for name, _ in CHANNELS.values())
BUS_TYPES: tuple[str, ...] = tuple(CHANNELS)


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: dict[str, Any]


def to_notification(ev: Event) -> Notification | None:
    """The notification for a bus event, or None if the event is not one the cloud can subscribe to."""
    spec = CHANNELS.get(ev.type)
    device_id = ev.data.get("device_id")
    if spec is None or not isinstance(device_id, str):
        return None
    method, fields = spec
    params: dict[str, Any] = {"deviceId": device_id, "stationId": ev.station_id}
    for name in fields:
        if name in ev.data:
            params[camel(name)] = ev.data[name]
    params.setdefault("ts", datetime.fromtimestamp(ev.ts, UTC).isoformat().replace("+00:00", "Z"))
    return Notification(method, params)


class NotificationQueue:
    """FIFO with a size limit: a full queue drops its oldest entry and counts it."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Notification] = deque()
        self.maxsize = maxsize
        self.overflow = 0  # dropped since the station started

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Notification) -> bool:
        """Add `item`; False if an older one had to be dropped for it."""
        dropped = False
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.overflow += 1
            dropped = True
        self._items.append(item)
        return dropped

    def count_lost(self, n: int) -> None:
        """Events lost before they reached the queue (the bus subscription overflowed)."""
        self.overflow += n

    def peek(self) -> Notification | None:
        return self._items[0] if self._items else None

    def pop(self, item: Notification) -> None:
        """Remove `item` if it is still the oldest (an overflow may have dropped it while it was sent)."""
        if self._items and self._items[0] is item:
            self._items.popleft()

    def clear(self) -> None:
        self._items.clear()
