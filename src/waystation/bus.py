"""Typed in-process pub/sub with bounded per-subscriber queues.

Publishing never blocks and never fails: each subscriber has its own bounded queue; when it is full
the oldest event is dropped and the subscriber is told how many it missed (a gap marker), so a slow
consumer (a browser on a bad link) can never slow the station. Every event gets a sequence number
and the last N are kept in a ring buffer for SSE `Last-Event-ID` replay.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

# Events whose type starts with this are for services inside the station (e.g. every reading of a batch
# for the rule engine): never in the SSE ring, never matched by wildcards, so they never leave the process.
INTERNAL_PREFIX = "_"


@dataclass(slots=True)
class Event:
    type: str
    data: dict[str, Any]
    station_id: str | None = None
    seq: int = 0
    ts: float = field(default_factory=time.time)
    origin: str | None = None  # the worker that produced it, when bridged from another one (cluster/)


@dataclass(slots=True)
class Gap:
    """Marker handed to a subscriber whose queue overflowed."""

    dropped: int


class TypeFilter:
    """Event-type patterns like `device.*,rule.fired`; empty means everything."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [p.strip() for p in patterns if p.strip()]
        self._exact = {p for p in self.patterns if "*" not in p and "?" not in p}
        self._wild = [p for p in self.patterns if p not in self._exact]

    @classmethod
    def parse(cls, spec: str | None) -> TypeFilter:
        return cls((spec or "").split(","))

    def matches(self, event_type: str) -> bool:
        if event_type in self._exact:
            return True
        if event_type.startswith(INTERNAL_PREFIX):
            return False  # internal events go only to subscribers that name them exactly
        if not self.patterns:
            return True
        return any(fnmatch.fnmatchcase(event_type, p) for p in self._wild)


class Subscription:
    def __init__(
        self,
        bus: Bus,
        types: TypeFilter,
        maxsize: int,
        station_ids: set[str] | None,
        local_only: bool = False,
    ) -> None:
        self._bus = bus
        self.local_only = local_only
        self.types = types
        self.station_ids = station_ids
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._dropped = 0
        self._wake = asyncio.Event()
        self.closed = False

    def wants(self, ev: Event) -> bool:
        if self.local_only and ev.origin is not None:
            return False
        if (
            self.station_ids is not None
            and ev.station_id is not None
            and ev.station_id not in self.station_ids
        ):
            return False
        return self.types.matches(ev.type)

    def offer(self, ev: Event) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(ev)
        self._wake.set()

    async def get(self) -> Event | Gap:
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return Gap(dropped)
            if self._queue:
                return self._queue.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    def get_nowait(self) -> Event | Gap | None:
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return Gap(dropped)
        return self._queue.popleft() if self._queue else None

    def __aiter__(self) -> AsyncIterator[Event | Gap]:
        return self

    async def __anext__(self) -> Event | Gap:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        self._bus._unsubscribe(self)


class Bus:
    def __init__(self, ring_size: int = 2000) -> None:
        self._subs: list[Subscription] = []
        self._seq = itertools.count(1)
        self.ring: deque[Event] = deque(maxlen=ring_size)
        self.published = 0

    def publish(self, ev: Event) -> Event:
        ev.seq = next(self._seq)
        if not ev.type.startswith(INTERNAL_PREFIX):
            self.ring.append(ev)
        self.published += 1
        for sub in self._subs:
            if sub.wants(ev):
                sub.offer(ev)
        return ev

    def emit(self, event_type: str, data: dict[str, Any], station_id: str | None = None) -> Event:
        return self.publish(Event(event_type, data, station_id))

    def wanted(self, event_type: str) -> bool:
        """Whether any subscriber takes this type (lets a producer skip building a costly payload)."""
        return any(sub.types.matches(event_type) for sub in self._subs)

    def subscribe(
        self,
        types: TypeFilter | None = None,
        maxsize: int = 1000,
        station_ids: set[str] | None = None,
        local_only: bool = False,
    ) -> Subscription:
        """`local_only`: only events produced in this process, none bridged from other workers (for
        consumers that must act once per event: each worker acts on its own)."""
        sub = Subscription(self, types or TypeFilter(), maxsize, station_ids, local_only)
        self._subs.append(sub)
        return sub

    def replay_after(self, seq: int) -> list[Event]:
        """Events newer than `seq` still in the ring buffer (oldest first)."""
        return [ev for ev in self.ring if ev.seq > seq]

    @property
    def oldest_seq(self) -> int:
        return self.ring[0].seq if self.ring else 0

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
