"""SSE `GET /api/v1/events/stream` (PROTOCOLS §5).

Each client is a bus subscription with its own bounded queue (drop-oldest, then a `stream.gap` event
saying how many were missed), so a slow browser never slows the station. `Last-Event-ID` replays
from the bus's ring buffer; a comment keep-alive goes out every 15 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from waystation.auth.deps import StreamAuth, bearer_token, get_ctx, require
from waystation.auth.roles import Principal
from waystation.bus import INTERNAL_PREFIX, Event, Gap, TypeFilter
from waystation.context import AppContext
from waystation.errors import Unprocessable

router = APIRouter(tags=["realtime"])


def _sse(ev: Event) -> ServerSentEvent:
    return ServerSentEvent(data=orjson.dumps(ev.data).decode(), event=ev.type, id=str(ev.seq))


def _parse_last_id(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


@router.get("/events/stream", response_class=EventSourceResponse)
async def event_stream(
    request: Request,
    types: str | None = Query(default=None, max_length=1000, description="e.g. device.*,rule.fired"),
    last_event_id: str | None = Query(default=None, alias="last_event_id", max_length=20),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> EventSourceResponse:
    type_filter = TypeFilter.parse(types)
    if internal := [p for p in type_filter.patterns if p.startswith(INTERNAL_PREFIX)]:
        # Internal events (between the station's own parts and workers) are not for clients.
        raise Unprocessable(f"Unknown event type {internal[0]!r}: names starting with '_' are internal.")
    auth = StreamAuth(ctx, bearer_token(request) or "", principal)

    def allowed(ev: Event) -> bool:
        # Callers limited to some stations see only those stations' events (none of the
        # installation-wide ones, which may concern other stations).
        visible = auth.principal.visible_stations
        return type_filter.matches(ev.type) and (visible is None or ev.station_id in visible)

    since = _parse_last_id(request.headers.get("last-event-id") or last_event_id)
    # Subscribe before replaying so nothing published in between is missed.
    sub = ctx.bus.subscribe(type_filter, maxsize=ctx.settings.sse_client_queue)
    metrics = request.app.state.metrics

    # `system.status` is only built while some stream would pass it on (see status/sampler.py).
    status_listener = type_filter.matches("system.status") and principal.visible_stations is None

    async def stream() -> AsyncIterator[ServerSentEvent]:
        metrics.sse_clients.inc()
        metrics.status_listeners += status_listener
        try:
            replayed_up_to = 0
            if since is not None:
                if ctx.bus.oldest_seq and since + 1 < ctx.bus.oldest_seq:
                    missed: dict[str, Any] = {"dropped": None, "reason": "replay buffer exceeded"}
                    yield ServerSentEvent(data=orjson.dumps(missed).decode(), event="stream.gap")
                for ev in ctx.bus.replay_after(since):
                    if allowed(ev):
                        replayed_up_to = ev.seq
                        yield _sse(ev)
            async for item in sub:
                if await auth.current() is None:
                    return  # token revoked or expired, user disabled: end the stream
                if isinstance(item, Gap):
                    yield ServerSentEvent(
                        data=orjson.dumps({"dropped": item.dropped}).decode(), event="stream.gap"
                    )
                    continue
                if item.seq <= replayed_up_to or not allowed(item):
                    continue
                yield _sse(item)
        finally:
            sub.close()
            metrics.sse_clients.dec()
            metrics.status_listeners -= status_listener

    return EventSourceResponse(
        stream(),
        ping=int(ctx.settings.sse_keepalive_seconds) or 15,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
