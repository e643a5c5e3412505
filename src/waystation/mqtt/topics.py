"""MQTT topic filters and dispatch.

Exact topics live in a dict and wildcard filters in a list, so the common case (an exact topic) is one
dict lookup and only wildcard filters are matched one by one (the Home Assistant layout).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Handler = Callable[[str, bytes, "MessageInfo"], None]


class AckToken:
    """Acknowledges one QoS 1 message once every holder has released it.

    The link holds it while handlers run; a handler that defers (the ingest pipeline, until its batch
    is committed) calls `hold()` and later `release()`.
    """

    __slots__ = ("_ack", "_holds", "generation", "mid", "qos")

    def __init__(self, ack: Callable[[int, int, int], None], mid: int, qos: int, generation: int = 0) -> None:
        self._ack = ack
        self.mid = mid
        self.qos = qos
        self.generation = generation
        self._holds = 1

    def hold(self) -> AckToken:
        self._holds += 1
        return self

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._ack(self.mid, self.qos, self.generation)

    @property
    def pending(self) -> bool:
        return self._holds > 0


@dataclass(slots=True, frozen=True)
class MessageInfo:
    qos: int
    retain: bool
    mid: int
    dup: bool = False
    ack: AckToken | None = None


# MQTT §1.5.3 (3.1.1) and §1.5.4 (5): a broker may drop a client that sends control characters or
# Unicode noncharacters in a topic, and Mosquitto does, so one such filter would take the station's whole
# link down (and again after every reconnect). Lone surrogates cannot be encoded at all.
_NONCHARACTERS = "".join(chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF))
_FORBIDDEN_IN_TOPIC = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef{_NONCHARACTERS}]")


def validate_filter(topic_filter: str) -> str:
    """Raise ValueError unless `topic_filter` is a valid MQTT subscription filter."""
    if not topic_filter or _FORBIDDEN_IN_TOPIC.search(topic_filter) or len(topic_filter.encode()) > 65535:
        raise ValueError(
            "a topic filter must be 1-65535 bytes without NUL, control characters or Unicode noncharacters"
        )
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError("'#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError("'+' must be a whole level")
    return topic_filter


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def strip_share(topic_filter: str) -> str:
    """`$share/group/a/b` → `a/b` (what the messages' topics will match)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching rules, including `$`-topics not matching leading wildcards."""
    if topic.startswith("$") and topic_filter[:1] in {"+", "#"}:
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class TopicRouter:
    """Maps subscription filters to handlers and dispatches incoming messages."""

    def __init__(self) -> None:
        self._exact: dict[str, list[Handler]] = {}
        self._wild: list[tuple[str, Handler]] = []

    def add(self, topic_filter: str, handler: Handler) -> None:
        target = strip_share(validate_filter(topic_filter))
        if is_wildcard(target):
            self._wild.append((target, handler))
        else:
            self._exact.setdefault(target, []).append(handler)

    def remove(self, topic_filter: str, handler: Handler) -> None:
        target = strip_share(topic_filter)
        if is_wildcard(target):
            self._wild = [(f, h) for f, h in self._wild if not (f == target and h == handler)]
        else:
            handlers = [h for h in self._exact.get(target, []) if h != handler]
            if handlers:
                self._exact[target] = handlers
            else:
                self._exact.pop(target, None)

    def handlers_of(self, topic_filter: str) -> list[Handler]:
        """The handlers registered for exactly this filter."""
        target = strip_share(topic_filter)
        if is_wildcard(target):
            return [h for f, h in self._wild if f == target]
        return list(self._exact.get(target, ()))

    def handlers_for(self, topic: str) -> list[Handler]:
        found = list(self._exact.get(topic, ()))
        for topic_filter, handler in self._wild:
            if matches(topic_filter, topic):
                found.append(handler)
        return found
