"""The shared-table properties class decodes and validates exactly as paho's own class does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from waystation.mqtt.paho_speedups import SharedTableProperties, install

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
publish_properties = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": text,
        "ResponseTopic": text.filter(bool),
        "CorrelationData": st.binary(max_size=16),
        "SubscriptionIdentifier": st.lists(st.integers(1, 268435455), min_size=1, max_size=3),
        "TopicAlias": st.integers(1, 65535),
        "UserProperty": st.lists(st.tuples(text, text), min_size=1, max_size=3),
    },
)


def _packed(values: dict[str, object]) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return bytes(props.pack())  # type: ignore[no-untyped-call]


@settings(max_examples=200, deadline=None)
@given(publish_properties)
def test_decoding_matches_paho(values: dict[str, object]) -> None:
    buffer = _packed(values)
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    ours = SharedTableProperties(PacketTypes.PUBLISH)
    their_error: Exception | None = None
    try:
        _, their_len = theirs.unpack(buffer)  # type: ignore[no-untyped-call]
    except Exception as exc:  # paho refuses some of its own encodings (a NUL in a string)
        their_error = exc
    if their_error is not None:
        with pytest.raises(type(their_error)) as refused:
            ours.unpack(buffer)
        assert str(refused.value) == str(their_error)
        return
    _, our_len = ours.unpack(buffer)
    assert our_len == their_len
    assert ours.json() == theirs.json()  # type: ignore[no-untyped-call]
    assert str(ours) == str(theirs)
    # A second unpack into the same object starts from scratch, as paho's does.
    ours.unpack(_packed({}))
    assert ours.json() == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SubscriptionIdentifier", 0),
        ("SubscriptionIdentifier", 268435456),
        ("TopicAlias", 0),
        ("PayloadFormatIndicator", 2),
        ("ReceiveMaximum", 10),  # not a PUBLISH property
        ("NoSuchProperty", 1),
    ],
)
def test_invalid_values_are_refused_like_paho(name: str, value: int) -> None:
    with pytest.raises(MQTTException) as theirs:
        setattr(Properties(PacketTypes.PUBLISH), name, value)  # type: ignore[no-untyped-call]
    with pytest.raises(MQTTException) as ours:
        setattr(SharedTableProperties(PacketTypes.PUBLISH), name, value)
    assert str(ours.value) == str(theirs.value)


def test_repeatable_properties_accumulate() -> None:
    props = SharedTableProperties(PacketTypes.PUBLISH)
    props.SubscriptionIdentifier = 3
    props.SubscriptionIdentifier = [4, 5]
    assert props.SubscriptionIdentifier == [3, 4, 5]


def test_install_points_the_decoder_at_the_shared_tables() -> None:
    assert install() is True
    assert _packet.Properties is SharedTableProperties
    assert install() is True  # idempotent
