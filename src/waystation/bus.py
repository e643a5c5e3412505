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


@dataclass(slots=True)
class Event:
    type: str
    data: dict[str, Any]
    station_id: str | None = None
    seq: int = 0
    ts: float = field(default_factory=time.time)


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
        if not self.patterns:
            return True
        if event_type in self._exact:
            return True
        return any(fnmatch.fnmatchcase(event_type, p) for p in self._wild)


class Subscription:
    def __init__(self, bus: Bus, types: TypeFilter, maxsize: int, station_ids: set[str] | None) -> None:
        self._bus = bus
        self.types = types
        self.station_ids = station_ids
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._dropped = 0
        self._wake = asyncio.Event()
        self.closed = False

    def wants(self, ev: Event) -> bool:
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
        self.ring.append(ev)
        self.published += 1
        for sub in self._subs:
            if sub.wants(ev):
                sub.offer(ev)
        return ev

    def emit(self, event_type: str, data: dict[str, Any], station_id: str | None = None) -> Event:
        return self.publish(Event(event_type, data, station_id))

    def subscribe(
        self, types: TypeFilter | None = None, maxsize: int = 1000, station_ids: set[str] | None = None
    ) -> Subscription:
        sub = Subscription(self, types or TypeFilter(), maxsize, station_ids)
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
