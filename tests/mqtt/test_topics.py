"""Topic filters: validation, MQTT matching rules, and exact-vs-wildcard dispatch."""

from __future__ import annotations

import pytest

from waystation.mqtt.topics import MessageInfo, TopicRouter, matches, strip_share, validate_filter


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/+/device/+/state", "station/1/device/x/state", True),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a/b", "a/c", False),
    ],
)
def test_matching_follows_mqtt_rules(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "bad",
    ["", "a/#/b", "a/b#", "a+/b", "x\x00", "a/\x01", "a/\x7f", "a/\x85", "a/\ufdd0", "a/\uffff", "a/\ud800"],
)
def test_invalid_filters_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"topic filter|must be"):
        validate_filter(bad)


def test_shared_subscription_prefix_is_stripped_for_matching() -> None:
    assert strip_share("$share/waystation/station/#") == "station/#"


def test_router_dispatches_exact_and_wildcard_handlers() -> None:
    seen: list[str] = []
    router = TopicRouter()

    def exact(topic: str, payload: bytes, info: MessageInfo) -> None:
        seen.append("exact")

    def wild(topic: str, payload: bytes, info: MessageInfo) -> None:
        seen.append("wild")

    router.add("a/b", exact)
    router.add("a/+", wild)
    for handler in router.handlers_for("a/b"):
        handler("a/b", b"", MessageInfo(1, False, 1))
    assert sorted(seen) == ["exact", "wild"]
    router.remove("a/+", wild)
    assert router.handlers_for("a/b") == [exact]
    assert router.handlers_for("a/c") == []
