"""Which bus events webhooks may receive, and the event-type patterns endpoints subscribe with."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

#: The public event types (PROTOCOLS §5) an endpoint may subscribe to. Internal bus traffic (the broker
#: outbox, …) is never delivered, whatever the pattern.
DELIVERABLE_TYPES: frozenset[str] = frozenset(
    {
        "device.created",
        "device.updated",
        "device.deleted",
        "device.online",
        "device.offline",
        "device.state_changed",
        "device.event",
        "device.command_sent",
        "device.command_acked",
        "telemetry.batch",
        "experiment.started",
        "experiment.stopped",
        "flow.changed",
        "rule.fired",
        "webhook.delivery_failed",
        "broker.sync_changed",
        "cloud.status_changed",
        "provisioning.candidate",
        "provisioning.result",
        "ota.progress",
        "mcp.confirmation_requested",
        "system.status",
    }
)

#: Several batches a second on a busy station: wildcards never match it, it must be named exactly.
EXACT_ONLY_TYPES: frozenset[str] = frozenset({"telemetry.batch"})

#: The type of the ping `POST /webhooks/{id}/test` sends; never on the bus, so not subscribable.
TEST_EVENT = "webhook.test"
FAILED_EVENT = "webhook.delivery_failed"

_SEGMENT = r"(?:[a-z][a-z0-9_]*|\*)"
PATTERN_RE = re.compile(rf"^(?:\*|{_SEGMENT}(?:\.{_SEGMENT})*)$")
MAX_PATTERNS = 50


def pattern_matches(pattern: str, event_type: str) -> bool:
    if "*" not in pattern:
        return pattern == event_type
    return event_type not in EXACT_ONLY_TYPES and fnmatch.fnmatchcase(event_type, pattern)


def types_for(patterns: Iterable[str]) -> frozenset[str]:
    """The deliverable types a list of patterns selects (computed once per endpoint, so matching an
    event is a set lookup)."""
    wanted = list(patterns)
    return frozenset(t for t in DELIVERABLE_TYPES if any(pattern_matches(p, t) for p in wanted))


def check_patterns(patterns: list[str]) -> str | None:
    """Why the list is unusable, or None. Each pattern must be well formed and select at least one
    deliverable type, so a typo (`devices.*`) is refused instead of silently never matching."""
    if not patterns:
        return "event_types must name at least one event type or pattern"
    if len(patterns) > MAX_PATTERNS:
        return f"event_types may hold at most {MAX_PATTERNS} patterns"
    for pattern in patterns:
        if not PATTERN_RE.fullmatch(pattern):
            return (
                f"event_types: {pattern[:64]!r} is not an event type or pattern "
                "(lower-case names separated by dots; `*` stands for one or more name parts)"
            )
        if not types_for([pattern]):
            hint = ""
            if any(fnmatch.fnmatchcase(t, pattern) for t in EXACT_ONLY_TYPES):
                hint = " (telemetry.batch is only delivered when named exactly)"
            return f"event_types: {pattern!r} matches no event type{hint}"
    return None
