"""Fuzzing the device-protocol parser: no exception escapes, every rejection has a reason."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from waystation.devices import protocol

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
suffixes = st.sampled_from(["state", "event", "heartbeat", "handshake", "command/ack", "bogus"])


@settings(max_examples=400, deadline=None)
@given(suffix=suffixes, payload=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(suffix: str, payload: bytes) -> None:
    decoded = protocol.decode(payload, 1024)
    if isinstance(decoded, protocol.Rejection):
        assert decoded.reason in protocol.REJECTION_REASONS and decoded.detail
        return
    result = protocol.parse_message(suffix, decoded)
    if isinstance(result, protocol.Rejection):
        assert result.reason in protocol.REJECTION_REASONS and result.detail


@settings(max_examples=400, deadline=None)
@given(
    suffix=suffixes,
    data=st.dictionaries(
        st.sampled_from(
            [
                "state",
                "ts",
                "event",
                "data",
                "status",
                "request_id",
                "error",
                "type",
                "firmwareVersion",
                "chip",
            ]
        ),
        json_values,
        max_size=5,
    ),
)
def test_structured_payloads_never_raise(suffix: str, data: dict) -> None:
    result = protocol.parse_message(suffix, orjson.loads(orjson.dumps(data)))
    if isinstance(result, protocol.Rejection):
        assert result.reason in protocol.REJECTION_REASONS and result.detail


@given(topic=st.text(max_size=80))
def test_parse_topic_never_raises(topic: str) -> None:
    protocol.parse_topic(topic)
