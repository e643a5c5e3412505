"""Pure rule evaluation: operators, the `for_seconds` hold, device-event matching and message templates.

Nothing here touches the database, the bus or the clock: callers pass the time in, so every piece is
unit-tested on its own (tests/rules/test_engine.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Operator = Literal["gt", "lt", "gte", "lte", "eq", "between", "not_between"]
OPERATORS: tuple[Operator, ...] = ("gt", "lt", "gte", "lte", "eq", "between", "not_between")
RANGE_OPERATORS: frozenset[str] = frozenset({"between", "not_between"})

#: `eq` compares floats with this absolute tolerance: readings travel as JSON floats, so 0.1 + 0.2 must
#: still equal 0.3.
EQ_EPSILON = 1e-9

#: What a device event's `data.value` must be for a rule with an operator to compare it.
EVENT_VALUE_KEY = "value"


def condition_holds(
    operator: str, value: float, threshold: float, threshold_high: float | None = None
) -> bool:
    """Whether `value` meets the condition. `between` and `not_between` are inclusive of both bounds
    (`between` 10..20 holds for 10 and 20; `not_between` does not). NaN never meets a condition."""
    if math.isnan(value):
        return False
    if operator == "gt":
        return value > threshold
    if operator == "lt":
        return value < threshold
    if operator == "gte":
        return value >= threshold
    if operator == "lte":
        return value <= threshold
    if operator == "eq":
        return abs(value - threshold) <= EQ_EPSILON
    if operator in RANGE_OPERATORS:
        if threshold_high is None:
            raise ValueError(f"{operator} needs threshold_high")
        inside = threshold <= value <= threshold_high
        return inside if operator == "between" else not inside
    raise ValueError(f"unknown operator {operator!r}")


@dataclass(slots=True)
class Hold:
    """A rule's `for_seconds` state: since when its condition has held without a break, and the latest
    reading that met it (the value a timer-driven firing reports)."""

    since: float
    value: float | None
    reading_ts: str | None
    channel: str | None
    device_id: str | None
    # A reading arrived that has not led to a firing attempt yet. The timer fires only armed holds, so a
    # device that fell silent on a high reading is not reported again every cooldown forever.
    armed: bool = True


@dataclass(slots=True)
class HoldTracker:
    """The condition must hold continuously for `for_seconds` before a rule may fire; one reading that
    does not meet it starts the wait over, so a short spike never fires. Times are the station's clock
    (seconds since the epoch), not the readings' own timestamps, so a device's wrong clock cannot
    shorten the wait."""

    holds: dict[int, Hold] = field(default_factory=dict)

    def observe(
        self,
        rule_id: int,
        holds: bool,
        now: float,
        value: float | None = None,
        reading_ts: str | None = None,
        channel: str | None = None,
        device_id: str | None = None,
    ) -> Hold | None:
        """Record one evaluation; returns the rule's hold while the condition holds, None after a break."""
        if not holds:
            self.holds.pop(rule_id, None)
            return None
        hold = self.holds.get(rule_id)
        if hold is None:
            hold = self.holds[rule_id] = Hold(now, value, reading_ts, channel, device_id)
        else:
            hold.value, hold.reading_ts, hold.channel, hold.device_id = value, reading_ts, channel, device_id
            hold.armed = True
        return hold

    @staticmethod
    def due(hold: Hold, for_seconds: float, now: float) -> bool:
        return now - hold.since >= for_seconds

    def forget(self, rule_id: int) -> None:
        self.holds.pop(rule_id, None)

    def clear(self) -> None:
        self.holds.clear()


def event_matches(
    rule_event: str, rule_device: str | None, device_id: str, kind: str, data: Mapping[str, Any]
) -> bool:
    """A device event (`{"event": kind, "data": {"action": …}}`) matches a rule's `event` when its
    `data.action` equals it, or when the rule names the kind itself (`device_event`, `user_event`: every
    event of that kind). `device_id` on the rule limits it to one device."""
    if rule_device is not None and rule_device != device_id:
        return False
    return data.get("action") == rule_event or kind == rule_event


def event_value(data: Mapping[str, Any]) -> float | None:
    """The number an event rule with an operator compares: `data.value`, if it is a finite number."""
    raw = data.get(EVENT_VALUE_KEY)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    number = float(raw)
    return number if math.isfinite(number) else None


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
PLACEHOLDERS = ("rule", "value", "channel", "device_id", "event", "threshold", "threshold_high", "operator")


def render_message(template: str, fields: Mapping[str, Any]) -> str:
    """Fill `{rule}`, `{value}`, … in an action's message. Only these names are replaced (unknown ones
    stay as written): a plain substitution, never `str.format`, whose attribute access would let a rule
    author read the station's internals."""

    def _sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fields:
            return match.group(0)
        value = fields[name]
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    return _PLACEHOLDER.sub(_sub, template)


def describe(operator: str | None, threshold: float | None, threshold_high: float | None) -> str:
    """The condition in words for default messages: "> 30", "between 10 and 20"."""
    if operator is None or threshold is None:
        return "occurred"
    symbols = {"gt": ">", "lt": "<", "gte": "≥", "lte": "≤", "eq": "="}
    if operator in symbols:
        return f"{symbols[operator]} {threshold:g}"
    high = f"{threshold_high:g}" if threshold_high is not None else "?"
    word = "between" if operator == "between" else "outside"
    return f"{word} {threshold:g} and {high}"
