"""The pure evaluation functions: every operator (with `eq`'s tolerance and inclusive ranges), the
`for_seconds` hold, device-event matching and message templates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waystation.rules.engine import (
    EQ_EPSILON,
    OPERATORS,
    HoldTracker,
    condition_holds,
    describe,
    event_matches,
    event_value,
    render_message,
)

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@pytest.mark.parametrize(
    ("operator", "value", "threshold", "high", "expected"),
    [
        ("gt", 30.1, 30, None, True),
        ("gt", 30, 30, None, False),
        ("lt", 29.9, 30, None, True),
        ("lt", 30, 30, None, False),
        ("gte", 30, 30, None, True),
        ("gte", 29.999, 30, None, False),
        ("lte", 30, 30, None, True),
        ("lte", 30.001, 30, None, False),
        ("eq", 0.1 + 0.2, 0.3, None, True),  # 0.30000000000000004: within ε
        ("eq", 0.3 + 2e-9, 0.3, None, False),  # beyond ε
        ("eq", 0.3 + 0.5e-9, 0.3, None, True),
        ("between", 10, 10, 20, True),  # inclusive at both ends
        ("between", 20, 10, 20, True),
        ("between", 15, 10, 20, True),
        ("between", 9.99, 10, 20, False),
        ("between", 20.01, 10, 20, False),
        ("not_between", 10, 10, 20, False),
        ("not_between", 20, 10, 20, False),
        ("not_between", 9.99, 10, 20, True),
        ("not_between", 20.01, 10, 20, True),
        ("between", 5, 5, 5, True),  # a single-point range
    ],
)
def test_operators(operator: str, value: float, threshold: float, high: float | None, expected: bool) -> None:
    assert condition_holds(operator, value, threshold, high) is expected


@pytest.mark.parametrize("operator", OPERATORS)
def test_nan_never_holds(operator: str) -> None:
    assert condition_holds(operator, math.nan, 0.0, 1.0) is False


def test_range_operators_need_the_upper_bound_and_unknown_operators_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold_high"):
        condition_holds("between", 1.0, 0.0, None)
    with pytest.raises(ValueError, match="unknown operator"):
        condition_holds("ne", 1.0, 0.0)


@given(value=finite, threshold=finite)
def test_strict_and_loose_comparisons_agree(value: float, threshold: float) -> None:
    gt, lt = condition_holds("gt", value, threshold), condition_holds("lt", value, threshold)
    gte, lte = condition_holds("gte", value, threshold), condition_holds("lte", value, threshold)
    assert gte == (gt or value == threshold) and lte == (lt or value == threshold)
    assert not (gt and lt) and (gte or lt) and (lte or gt)
    if condition_holds("eq", value, threshold):
        assert abs(value - threshold) <= EQ_EPSILON


@given(value=finite, a=finite, b=finite)
def test_between_and_not_between_are_complements(value: float, a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    inside = condition_holds("between", value, low, high)
    assert inside != condition_holds("not_between", value, low, high)
    assert inside == (condition_holds("gte", value, low) and condition_holds("lte", value, high))


def test_hold_must_last_and_a_break_starts_over() -> None:
    tracker = HoldTracker()
    hold = tracker.observe(1, True, now=100.0, value=31.0)
    assert hold is not None and hold.since == 100.0
    assert not tracker.due(hold, 5.0, now=104.9)
    # Still holding: the start stays, the latest value is kept.
    hold = tracker.observe(1, True, now=103.0, value=32.0)
    assert hold is not None and hold.since == 100.0 and hold.value == 32.0
    assert tracker.due(hold, 5.0, now=105.0)
    # A firing attempt disarms the hold; only a new reading arms it again (the timer fires armed holds).
    hold.armed = False
    assert tracker.observe(1, True, now=105.5, value=32.5) is hold and hold.armed
    # One reading below the threshold (a spike ended) resets the wait.
    assert tracker.observe(1, False, now=104.0) is None and 1 not in tracker.holds
    hold = tracker.observe(1, True, now=106.0, value=33.0)
    assert hold is not None and hold.since == 106.0 and not tracker.due(hold, 5.0, now=110.0)
    tracker.forget(1)
    assert tracker.holds == {}


def test_device_event_matching() -> None:
    data = {"action": "motion_detected", "value": 3}
    assert event_matches("motion_detected", None, "pir-1", "device_event", data)
    assert event_matches("motion_detected", "pir-1", "pir-1", "device_event", data)
    assert not event_matches("motion_detected", "pir-2", "pir-1", "device_event", data)
    assert not event_matches("door_opened", None, "pir-1", "device_event", data)
    assert event_matches("user_event", None, "pir-1", "user_event", {"action": "button"})  # the whole kind
    assert event_value(data) == 3.0
    assert event_value({"value": True}) is None and event_value({"value": "7"}) is None
    assert event_value({}) is None and event_value({"value": math.inf}) is None


def test_messages() -> None:
    fields = {"rule": "Too warm", "value": 31.25, "channel": "device:gh-1/temperature", "device_id": None}
    assert (
        render_message("{rule}: {value} on {channel}", fields) == "Too warm: 31.25 on device:gh-1/temperature"
    )
    assert (
        render_message("{device_id} {unknown} {value.__class__}", fields) == "- {unknown} {value.__class__}"
    )
    assert describe("gt", 30, None) == "> 30"
    assert describe("not_between", 10, 20.5) == "outside 10 and 20.5"
    assert describe(None, None, None) == "occurred"
