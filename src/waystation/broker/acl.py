"""Least-privilege broker permissions, derived from the database (PROTOCOLS §2 topics).

A device may publish only its own `handshake`, `state`, `event`, `heartbeat` and `command/ack`, and
subscribe only to its own `command` and `handshake/ack`. The station's account reads what devices send
and writes what devices receive, for every station, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEVICE_PUBLISHES = ("handshake", "state", "event", "heartbeat", "command/ack")
DEVICE_SUBSCRIBES = ("command", "handshake/ack")

# Usernames of the accounts the station itself uses; a reconcile never removes these.
STATION_USERNAME = "waystation"
ADMIN_USERNAME = "waystation-admin"


@dataclass(frozen=True, slots=True)
class AclRule:
    action: Literal["publish", "subscribe"]
    topic: str
    allow: bool = True


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """What the broker must hold for one account: the desired state a sync applies."""

    username: str
    password: str = field(repr=False)
    client_id: str | None  # when set, the broker accepts this account only with this client id
    rules: tuple[AclRule, ...]
    device_id: str | None = None


def device_root(station_id: str, device_id: str) -> str:
    return f"station/{station_id}/device/{device_id}"


def device_rules(station_id: str, device_id: str) -> tuple[AclRule, ...]:
    root = device_root(station_id, device_id)
    return tuple(AclRule("publish", f"{root}/{leaf}") for leaf in DEVICE_PUBLISHES) + tuple(
        AclRule("subscribe", f"{root}/{leaf}") for leaf in DEVICE_SUBSCRIBES
    )


def station_rules(extra_subscriptions: tuple[str, ...] = ()) -> tuple[AclRule, ...]:
    """The station's own account: every device topic in the right direction, plus the topic filters of
    enabled flows on the station broker (`extra_subscriptions`)."""
    root = "station/+/device/+"
    reads = tuple(AclRule("subscribe", f"{root}/{leaf}") for leaf in DEVICE_PUBLISHES)
    writes = tuple(AclRule("publish", f"{root}/{leaf}") for leaf in DEVICE_SUBSCRIBES)
    flows = tuple(AclRule("subscribe", topic) for topic in extra_subscriptions)
    return reads + writes + flows


def station_tree_rules(extra_subscriptions: tuple[str, ...] = ()) -> tuple[AclRule, ...]:
    """The station's account on brokers that check subscriptions but not deliveries (EMQX): the device
    runtime subscribes to the whole device tree with one filter (`station/#`, or `$share/<group>/station/#`
    on a shared link), so that filter is granted instead of one per leaf. The station publishes only what
    devices receive."""
    writes = tuple(AclRule("publish", f"station/+/device/+/{leaf}") for leaf in DEVICE_SUBSCRIBES)
    reads = (AclRule("subscribe", "station/#"),)
    flows = tuple(AclRule("subscribe", topic) for topic in extra_subscriptions)
    return writes + reads + flows


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of one topic against a filter (`$`-topics never match a leading wildcard)."""
    if topic.startswith("$") and topic_filter[:1] in {"+", "#"}:
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def filter_covers(rule_filter: str, requested: str) -> bool:
    """True if every topic the requested subscription filter can match is matched by `rule_filter`.

    Not `topic_matches()`: a requested `+` or `#` must be met by an equal or wider wildcard in the rule."""
    if requested.startswith("$") and rule_filter[:1] in {"+", "#"}:
        return False
    rule_levels, asked = rule_filter.split("/"), requested.split("/")
    for i, level in enumerate(rule_levels):
        if level == "#":
            return True
        if i >= len(asked) or asked[i] == "#":
            return False
        if level != "+" and level != asked[i]:
            return False
    return len(rule_levels) == len(asked)


def permits(rule: AclRule, topic: str, action: Literal["publish", "subscribe", "receive"]) -> bool:
    """Whether `rule` is about `action` on `topic`: a publish names one topic (wildcards in it are a
    protocol error), a subscription a filter the rule must cover, a delivery one topic a subscribe rule
    must match."""
    if action == "publish":
        wildcard = "+" in topic or "#" in topic
        return rule.action == "publish" and not wildcard and topic_matches(rule.topic, topic)
    if action == "subscribe":
        return rule.action == "subscribe" and filter_covers(rule.topic, topic)
    return rule.action == "subscribe" and topic_matches(rule.topic, topic)


def device_username(device_id: str) -> str:
    return f"dev-{device_id}"


def device_topics(station_id: str, device_id: str) -> dict[str, str]:
    """The topics a bound client uses (PROTOCOLS §3 `topics`)."""
    root = device_root(station_id, device_id)
    topics = {leaf.replace("/", "_"): f"{root}/{leaf}" for leaf in DEVICE_PUBLISHES + DEVICE_SUBSCRIBES}
    return topics
