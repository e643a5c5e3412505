"""A cheaper properties object for paho-mqtt's MQTT 5 PUBLISH decoding.

paho builds a `Properties` for every received message, and its constructor rebuilds two lookup
tables of ~30 entries each time through a validating `__setattr__` (about 20 µs per message, the
largest single cost of the ingest path in a py-spy profile: docs/performance.md). The tables never
change, so this subclass shares one copy of them and answers paho's name lookups from dictionaries
built once; `clear()` (called by `unpack()` on every message) only looks at the attributes actually
set, and `__setattr__` applies paho's checks from those tables, handing anything it would refuse to
paho's own `__setattr__` so the errors stay paho's. Decoding itself is paho's code, unchanged.

`install()` points paho's packet decoder at the subclass. It is guarded: if a paho release moves
the decoder, nothing is patched and paho's own class keeps working (a warning says so).
"""

from __future__ import annotations

import logging
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

_PRIVATE = ("packetType", "types", "names", "properties")
_template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_TYPES: list[str] = _template.types
_NAMES: dict[str, int] = _template.names
_TABLE: dict[int, tuple[int, list[int]]] = _template.properties
_IDENT_OF: dict[str, int] = {name.replace(" ", ""): ident for name, ident in _NAMES.items()}
_NAME_OF: dict[int, str] = {ident: name for name, ident in _NAMES.items()}
_MULTIPLE = (11, 38)  # Subscription Identifier and User Property may repeat (paho's allowsMultiple)
# The value ranges paho's __setattr__ enforces; a value outside them takes paho's own path (and error).
_RANGES: dict[str, tuple[int, int]] = {
    "ReceiveMaximum": (1, 65535),
    "TopicAlias": (1, 65535),
    "TopicAliasMaximum": (0, 65535),
    "MaximumPacketSize": (1, 268435455),
    "SubscriptionIdentifier": (1, 268435455),
    "RequestResponseInformation": (0, 1),
    "RequestProblemInformation": (0, 1),
    "PayloadFormatIndicator": (0, 1),
}


class SharedTableProperties(Properties):
    """paho's `Properties` with its constant lookup tables shared instead of rebuilt per message."""

    def __init__(self, packetType: int) -> None:
        # object.__setattr__: paho's own __setattr__ would validate each private name again.
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", _TYPES)
        object.__setattr__(self, "names", _NAMES)
        object.__setattr__(self, "properties", _TABLE)

    def __setattr__(self, name: str, value: Any) -> None:
        name = name.replace(" ", "")
        if name in _PRIVATE:
            object.__setattr__(self, name, value)
            return
        ident = _IDENT_OF.get(name)
        bounds = _RANGES.get(name)
        if (
            ident is None
            or self.packetType not in _TABLE[ident][1]
            or (
                bounds is not None
                and not isinstance(value, list)
                and not (type(value) is int and bounds[0] <= value <= bounds[1])
            )
        ):
            # paho's own checks, which raise its own MQTTException
            super().__setattr__(name, value)  # type: ignore[no-untyped-call]
            return
        if ident in _MULTIPLE:
            if not isinstance(value, list):
                value = [value]
            if name in self.__dict__:
                value = self.__dict__[name] + value
        object.__setattr__(self, name, value)

    def allowsMultiple(self, compressedName: str) -> bool:
        return _IDENT_OF.get(compressedName, -1) in _MULTIPLE

    def getIdentFromName(self, compressedName: str) -> int:
        return _IDENT_OF.get(compressedName, -1)

    def getNameFromIdent(self, identifier: int) -> str | None:
        return _NAME_OF.get(identifier)

    def clear(self) -> None:
        # Same effect as paho's clear() (drop every property attribute), without probing all names.
        for name in [n for n in self.__dict__ if n not in _PRIVATE]:
            delattr(self, name)


def install() -> bool:
    """Make paho decode PUBLISH properties into `SharedTableProperties`; False if not possible."""
    try:
        from paho.mqtt import _packet
    except ImportError:
        log.warning("paho-mqtt's packet decoder moved; MQTT 5 decoding keeps paho's own properties")
        return False
    current: Any = getattr(_packet, "Properties", None)
    if current is SharedTableProperties:
        return True
    if current is not Properties:
        log.warning("paho-mqtt's packet decoder changed; MQTT 5 decoding keeps paho's own properties")
        return False
    _packet.Properties = SharedTableProperties  # type: ignore[attr-defined]
    return True
