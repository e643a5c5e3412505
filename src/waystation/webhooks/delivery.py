"""The delivery dispatcher: POSTs pending deliveries, retries with exponential backoff and jitter, and
dead-letters after the last attempt. Deliveries sharing an ordering key (one flow) go out strictly in
order: the next one waits until the one before it succeeded or was dead-lettered. Everything is in the
database, so deliveries survive restarts. Only a 2xx is a success (3xx, 4xx, 5xx, timeouts all fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database
from waystation.webhooks.models import Delivery, DeliveryAttempt

log = logging.getLogger(__name__)

MAX_CONCURRENT = 8  # ordering keys attempted at once


def backoff_seconds(attempt: int, base: float, rng: random.Random) -> float:
    """Delay before attempt `attempt + 1`: base * 4^(attempt-1), ±25 % jitter, capped at 1 hour.

    With the default base of 10 s the six attempts span about an hour (10 s, 40 s, 160 s, 11 min, 43 min)."""
    delay = min(base * (4 ** max(0, attempt - 1)), 3600.0)
    return float(delay * rng.uniform(0.75, 1.25))


def new_delivery(
    session: AsyncSession,
    *,
    kind: str,
    source: str,
    ordering_key: str,
    url: str,
    body: str,
    max_attempts: int,
) -> Delivery:
    delivery = Delivery(
        kind=kind,
        source=source,
        ordering_key=ordering_key,
        url=url,
        body=body,
        message_id=f"msg_{uuid.uuid4().hex}",
        max_attempts=max_attempts,
        next_attempt_at=datetime.now(UTC),
    )
    session.add(delivery)
    return delivery


class DeliveryDispatcher:
    def __init__(self, settings: Settings, db: Database, bus: Bus) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self.attempted = 0
        self.succeeded = 0
        self.dead_lettered = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            timeout=self.settings.delivery_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": "Waystation"},
        ) as client:
            while True:
                try:
                    busy = await self.dispatch_once(client)
                except Exception:
                    log.exception("delivery dispatch failed; retrying")
                    busy = False
                if not busy:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.delivery_poll_seconds)

    async def dispatch_once(self, client: httpx.AsyncClient) -> bool:
        """Attempt the due head of every ordering key once; True if anything was attempted."""
        now = datetime.now(UTC)
        async with self.db.session() as session:
            rows = (
                await session.scalars(
                    select(Delivery).where(Delivery.status == "pending").order_by(Delivery.id).limit(1000)
                )
            ).all()
        heads: dict[str, Delivery] = {}
        for d in rows:
            heads.setdefault(d.ordering_key, d)
        due = [d for d in heads.values() if d.next_attempt_at <= now]
        if not due:
            return False
        semaphore = asyncio.Semaphore(MAX_CONCURRENT)

        async def attempt(delivery: Delivery) -> None:
            async with semaphore:
                await self._attempt(client, delivery)

        await asyncio.gather(*(attempt(d) for d in due))
        return True

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        started = time.monotonic()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(timestamp),
        }
        status_code: int | None = None
        error: str | None = None
        try:
            response = await client.post(delivery.url, content=delivery.body.encode(), headers=headers)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        duration_ms = int((time.monotonic() - started) * 1000)
        self.attempted += 1
        attempt_no = delivery.attempts + 1
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "attempts": attempt_no,
            "last_status_code": status_code,
            "last_error": error,
        }
        if error is None:
            values.update(status="succeeded", delivered_at=now)
            self.succeeded += 1
        elif attempt_no >= delivery.max_attempts:
            values.update(status="dead_letter")
            self.dead_lettered += 1
            log.warning(
                "delivery %d to %s dead-lettered after %d attempts: %s",
                delivery.id,
                delivery.url,
                attempt_no,
                error,
            )
        else:
            delay = backoff_seconds(attempt_no, self.settings.delivery_backoff_base_seconds, self._rng)
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        async with self.db.session() as session:
            await session.execute(update(Delivery).where(Delivery.id == delivery.id).values(**values))
            session.add(
                DeliveryAttempt(
                    delivery_id=delivery.id,
                    attempt=attempt_no,
                    at=now,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
        if values.get("status") == "dead_letter":
            self.bus.emit(
                "webhook.delivery_failed",
                {
                    "delivery_id": delivery.id,
                    "kind": delivery.kind,
                    "source": delivery.source,
                    "error": error,
                },
            )
