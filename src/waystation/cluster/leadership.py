"""Leadership: run singleton jobs on exactly one worker, the one holding a PostgreSQL advisory lock.

Every worker tries the lock every `poll` seconds on a dedicated connection. The holder runs the job;
it checks its connection just as often, and a lost connection is lost leadership: the job is cancelled
at once (PostgreSQL frees the lock with the connection, and another worker takes it within a poll).
When the leader dies, its connection closes and a follower takes over within about one poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from waystation.cluster import locks
from waystation.config import Settings

log = logging.getLogger(__name__)

Listener = Callable[[bool], None]


class LostLeadership(Exception):
    pass


_LOST: tuple[type[BaseException], ...] = (*locks.DB_ERRORS, LostLeadership)


class Leadership:
    def __init__(
        self, settings: Settings, key: int, application_name: str, poll_seconds: float | None = None
    ) -> None:
        self.settings = settings
        self.key = key
        self.application_name = application_name
        self.poll = poll_seconds or settings.cluster_leader_poll_seconds
        self.is_leader = False
        self.since: float | None = None
        self.terms = 0  # how many times this worker became leader
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Called with True when this worker becomes leader and False when it stops being one."""
        self._listeners.append(listener)

    async def run(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Until cancelled: win the lock, run `job` while it is held, start over when it is lost."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await locks.connect(self.settings, self.application_name)
                await self._win(conn)
                await self._lead(conn, job)
            except asyncio.CancelledError:
                raise
            except _LOST as exc:
                log.warning("leadership (%s): %s", self.application_name, exc or type(exc).__name__)
            except Exception:
                log.exception("leadership (%s) failed; trying again", self.application_name)
            finally:
                self._set(False)
                await locks.close(conn)
            await asyncio.sleep(self.poll)

    async def _win(self, conn: asyncpg.Connection) -> None:
        while True:
            if await locks.try_lock(conn, self.key):
                return
            await asyncio.sleep(self.poll)

    async def _lead(self, conn: asyncpg.Connection, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._set(True)
        log.info("%s is now the leader: singleton jobs run here", self.application_name)
        work = asyncio.create_task(job(), name="leader-jobs")
        try:
            while not work.done():
                done, _ = await asyncio.wait({work}, timeout=self.poll)
                if not done and not await locks.alive(conn):
                    raise LostLeadership("database connection lost: singleton jobs stopped here")
            await work  # a job that ends by itself: keep leading (nothing else may run it), idle
            while True:
                await asyncio.sleep(self.poll)
                if not await locks.alive(conn):
                    raise LostLeadership("database connection lost")
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        self.since = time.time() if leader else None
        self.terms += leader
        for listener in list(self._listeners):
            try:
                listener(leader)
            except Exception:
                log.exception("leadership listener failed")
