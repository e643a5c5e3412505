"""The delivery dispatcher: POSTs pending deliveries, retries with exponential backoff and jitter, and
dead-letters after the last attempt. Everything is in the database, so deliveries survive restarts.
Only a 2xx is a success (3xx, 4xx, 5xx, timeouts all fail).

Two kinds of delivery share the table and the sender:

- flow endpoints (`kind="flow"`): deliveries sharing an ordering key (one flow) go out strictly in
  order; the next one waits until the one before it succeeded or was dead-lettered. Each attempt is
  signed with the flow's current endpoint secret; flows that have none (made before signing existed, or
  deleted since) send unsigned.
- webhooks (`kind="webhook"`): no ordering, so one failing event never holds back the others; instead
  each endpoint has at most `max_concurrency` attempts in flight. Disabled endpoints' deliveries wait.
  Each attempt is signed (Standard Webhooks) with the endpoint's current secret.

A delivery is claimed before it is sent by moving its `next_attempt_at` a lease into the future in the
same statement that checks it is still due, so a stale read can never send it twice, and an attempt
cut short by a crash is simply due again when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database, emit
from waystation.flows.models import Flow
from waystation.secrets_box import SecretBox
from waystation.webhooks.events import FAILED_EVENT
from waystation.webhooks.models import Delivery, DeliveryAttempt, Webhook
from waystation.webhooks.signing import sign

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 32  # attempts in flight at once, all endpoints together
ORDERED_KINDS = ("flow",)  # kinds whose deliveries go out strictly in order per ordering key
LEASE_MARGIN_SECONDS = 30.0  # a claimed delivery is due again after the timeout plus this


def backoff_seconds(attempt: int, base: float, rng: random.Random) -> float:
    """Delay before attempt `attempt + 1`: base * 4^(attempt-1), ±25 % jitter, capped at 1 hour.

    With the default base of 10 s the six attempts span about an hour (10 s, 40 s, 160 s, 11 min, 43 min)."""
    delay = min(base * (4 ** max(0, attempt - 1)), 3600.0)
    return float(delay * rng.uniform(0.75, 1.25))


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def new_delivery(
    session: AsyncSession,
    *,
    kind: str,
    source: str,
    ordering_key: str,
    url: str,
    body: str,
    max_attempts: int,
    webhook_id: int | None = None,
    event_type: str | None = None,
    next_attempt_at: datetime | None = None,
) -> Delivery:
    delivery = Delivery(
        kind=kind,
        source=source,
        ordering_key=ordering_key,
        url=url,
        body=body,
        message_id=new_message_id(),
        max_attempts=max_attempts,
        next_attempt_at=next_attempt_at or datetime.now(UTC),
        webhook_id=webhook_id,
        event_type=event_type,
    )
    session.add(delivery)
    return delivery


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether `WAYSTATION_DELIVERY_ALLOWED_HOSTS` lets deliveries go to this URL's host."""
    if not allowed:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed)


def display_url(url: str) -> str:
    """The URL for logs and audit summaries: scheme, host and path; no credentials or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class HookInfo:
    """What sending needs of a webhook endpoint."""

    id: int
    enabled: bool
    max_concurrency: int
    station_id: str | None
    secret_sealed: str


HOOK_COLUMNS = (
    Webhook.id,
    Webhook.enabled,
    Webhook.max_concurrency,
    Webhook.station_id,
    Webhook.secret_sealed,
)


@dataclass(slots=True)
class Job:
    """One claimed delivery and what its attempt needs."""

    id: int
    kind: str
    source: str
    url: str
    body: str
    message_id: str
    attempts: int
    max_attempts: int
    webhook_id: int | None = None
    event_type: str | None = None
    station_id: str | None = None
    secret_sealed: str | None = None  # the webhook's or the flow's current secret; None: sent unsigned


class DeliveryDispatcher:
    def __init__(self, settings: Settings, db: Database, bus: Bus, box: SecretBox | None = None) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.box = box
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._client: httpx.AsyncClient | None = None
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # delivery id → its attempt
        self._hook_in_flight: dict[int, int] = {}  # webhook id → attempts in flight
        self._hook_reserved: dict[int, int] = {}  # webhook id → test pings waiting for a slot
        self._slot_freed = asyncio.Event()
        self.attempted = 0
        self.succeeded = 0
        self.dead_lettered = 0
        self.outcomes: Counter | None = None  # `waystation_deliveries_total{kind,outcome}`, set by the app

    def wake(self) -> None:
        self._wake.set()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.settings.delivery_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": "Waystation"},
        )

    async def run(self) -> None:
        async with self._new_client() as client:
            self._client = client
            try:
                while True:
                    self._wake.clear()  # before the pass, so a wake during it starts another at once
                    try:
                        await self.dispatch_once()
                    except Exception:
                        log.exception("delivery dispatch failed; retrying")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.delivery_poll_seconds)
            finally:
                self._client = None
                await self._stop_in_flight()

    async def _stop_in_flight(self) -> None:
        """On shutdown: stop the attempts in flight and make them due at once for the next start,
        instead of after their lease."""
        tasks = dict(self._in_flight)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if tasks:
            with contextlib.suppress(Exception):
                async with self.db.session() as session:
                    await session.execute(
                        update(Delivery)
                        .where(Delivery.id.in_(list(tasks)), Delivery.status == "pending")
                        .values(next_attempt_at=datetime.now(UTC))
                        .execution_options(synchronize_session=False)
                    )

    # --- choosing what to send ------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Claim and start every delivery that is due and has a free slot; return how many started."""
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0:
            return 0
        now = datetime.now(UTC)
        async with self.db.session() as session:
            hooks = {hook.id: hook for hook in await self._hooks(session)}
            ids = await self._due_ordered(session, now, free)
            ids += await self._due_webhooks(session, now, hooks, free - len(ids))
            ids = [i for i in ids if i not in self._in_flight][:free]
            if not ids:
                return 0
            lease = now + timedelta(seconds=self.settings.delivery_timeout_seconds + LEASE_MARGIN_SECONDS)
            claimed = (
                (
                    await session.execute(
                        update(Delivery)
                        .where(
                            Delivery.id.in_(ids),
                            Delivery.status == "pending",
                            Delivery.next_attempt_at <= now,
                        )
                        .values(next_attempt_at=lease)
                        .returning(Delivery.id)
                        .execution_options(synchronize_session=False)
                    )
                )
                .scalars()
                .all()
            )
            rows = (
                (await session.scalars(select(Delivery).where(Delivery.id.in_(claimed)))).all()
                if claimed
                else []
            )
            flow_secrets = await self._flow_secrets(session, {d.source for d in rows if d.kind == "flow"})
        for delivery in sorted(rows, key=lambda d: d.id):
            job = self._job(delivery, hooks.get(delivery.webhook_id or 0))
            if delivery.kind == "flow":
                job.secret_sealed = flow_secrets.get(delivery.source)
            self._start(job)
        return len(rows)

    async def _flow_secrets(self, session: AsyncSession, codes: set[str]) -> dict[str, str]:
        """The sealed endpoint secrets of these flows, read now so a rotation applies to the very next
        attempt. Flows without one (older flows, deleted ones) are left out: theirs go unsigned."""
        if not codes:
            return {}
        rows = await session.execute(
            select(Flow.code, Flow.endpoint_secret_sealed).where(
                Flow.code.in_(sorted(codes)), Flow.endpoint_secret_sealed.is_not(None)
            )
        )
        return {code: sealed for code, sealed in rows if sealed is not None}

    async def _hooks(self, session: AsyncSession, hook_id: int | None = None) -> list[HookInfo]:
        query = select(*HOOK_COLUMNS)
        if hook_id is not None:
            query = query.where(Webhook.id == hook_id)
        return [HookInfo(*row) for row in (await session.execute(query)).all()]

    async def _due_ordered(self, session: AsyncSession, now: datetime, limit: int) -> list[int]:
        """The due head (oldest pending delivery) of every ordering key of the ordered kinds."""
        heads = (
            select(func.min(Delivery.id))
            .where(Delivery.status == "pending", Delivery.kind.in_(ORDERED_KINDS))
            .group_by(Delivery.ordering_key)
        )
        query = (
            select(Delivery.id)
            .where(Delivery.id.in_(heads), Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        )
        return list((await session.scalars(query)).all())

    async def _due_webhooks(
        self, session: AsyncSession, now: datetime, hooks: dict[int, HookInfo], limit: int
    ) -> list[int]:
        """The oldest due deliveries of each enabled endpoint, as many as it has free slots: picked per
        endpoint, so one endpoint's backlog cannot crowd the others out."""
        free = {
            hook_id: row.max_concurrency
            - self._hook_in_flight.get(hook_id, 0)
            - self._hook_reserved.get(hook_id, 0)
            for hook_id, row in hooks.items()
            if row.enabled
        }
        free = {hook_id: n for hook_id, n in free.items() if n > 0}
        if not free or limit <= 0:
            return []
        rank = (
            func.row_number()
            .over(partition_by=Delivery.webhook_id, order_by=(Delivery.next_attempt_at, Delivery.id))
            .label("rank")
        )
        ranked = (
            select(Delivery.id, Delivery.webhook_id, rank)
            .where(
                Delivery.status == "pending",
                Delivery.kind == "webhook",
                Delivery.webhook_id.in_(list(free)),
                Delivery.next_attempt_at <= now,
            )
            .subquery()
        )
        rows = (
            await session.execute(
                select(ranked.c.id, ranked.c.webhook_id)
                .where(ranked.c.rank <= max(free.values()))
                .order_by(ranked.c.rank, ranked.c.id)
            )
        ).all()
        picked: list[int] = []
        for delivery_id, hook_id in rows:
            if free.get(hook_id, 0) > 0 and len(picked) < limit:
                free[hook_id] -= 1
                picked.append(delivery_id)
        return picked

    def _job(self, delivery: Delivery, hook: HookInfo | None) -> Job:
        return Job(
            id=delivery.id,
            kind=delivery.kind,
            source=delivery.source,
            url=delivery.url,
            body=delivery.body,
            message_id=delivery.message_id,
            attempts=delivery.attempts,
            max_attempts=delivery.max_attempts,
            webhook_id=delivery.webhook_id,
            event_type=delivery.event_type,
            station_id=hook.station_id if hook is not None else None,
            secret_sealed=hook.secret_sealed if hook is not None else None,
        )

    def _start(self, job: Job) -> asyncio.Task[None]:
        if job.webhook_id is not None:
            self._hook_in_flight[job.webhook_id] = self._hook_in_flight.get(job.webhook_id, 0) + 1
        task = asyncio.create_task(self._run_job(job), name=f"delivery-{job.id}")
        self._in_flight[job.id] = task
        return task

    async def _run_job(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery %d: recording the attempt failed; it is retried after its lease", job.id)
        finally:
            self._in_flight.pop(job.id, None)
            if job.webhook_id is not None:
                left = self._hook_in_flight.get(job.webhook_id, 1) - 1
                if left > 0:
                    self._hook_in_flight[job.webhook_id] = left
                else:
                    self._hook_in_flight.pop(job.webhook_id, None)
            self._slot_freed.set()
            self.wake()

    # --- sending now (test pings) ---------------------------------------------------------------------

    async def deliver_now(self, delivery_id: int) -> None:
        """Attempt one webhook delivery at once (it must have been created claimed, i.e. with its
        `next_attempt_at` in the future) and wait for the result, within the endpoint's concurrency
        limit: a slot is reserved ahead of the queued deliveries."""
        async with self.db.session() as session:
            delivery = await session.get(Delivery, delivery_id)
            found = []
            if delivery is not None and delivery.webhook_id is not None:
                found = await self._hooks(session, delivery.webhook_id)
        if delivery is None or not found or delivery.status != "pending":
            return
        hook = found[0]
        hook_id = hook.id
        self._hook_reserved[hook_id] = self._hook_reserved.get(hook_id, 0) + 1
        try:
            while self._hook_in_flight.get(hook_id, 0) >= hook.max_concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
        finally:
            left = self._hook_reserved.get(hook_id, 1) - 1
            if left > 0:
                self._hook_reserved[hook_id] = left
            else:
                self._hook_reserved.pop(hook_id, None)
        task = self._start(self._job(delivery, hook))
        # Shielded: a client that hangs up does not cut the attempt short.
        await asyncio.shield(task)

    # --- one attempt ----------------------------------------------------------------------------------

    async def _attempt(self, job: Job) -> None:
        started = time.monotonic()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": job.message_id,
            "webhook-timestamp": str(timestamp),
        }
        status_code: int | None = None
        error: str | None = None
        if not host_allowed(job.url, self.settings.delivery_allowed_hosts):
            error = "host not allowed by WAYSTATION_DELIVERY_ALLOWED_HOSTS"
        elif job.kind == "webhook" and job.secret_sealed is None:
            error = "the endpoint no longer exists"  # never send a webhook event unsigned
        elif job.secret_sealed is not None:
            try:
                secret = self._box().open(job.secret_sealed)
                headers["webhook-signature"] = sign(secret, job.message_id, timestamp, job.body)
            except ValueError:
                error = "the endpoint's secret cannot be decrypted with this station's key; rotate it"
        if error is None:
            status_code, error = await self._post(job, headers)
        duration_ms = int((time.monotonic() - started) * 1000)
        await self._record(job, status_code, error, duration_ms)

    def _box(self) -> SecretBox:
        if self.box is None:
            self.box = SecretBox(self.settings.data_dir)
        return self.box

    async def _post(self, job: Job, headers: dict[str, str]) -> tuple[int | None, str | None]:
        timeout = self.settings.delivery_timeout_seconds
        own_client = self._client is None
        client = self._client or self._new_client()
        try:
            # httpx's timeout is per read; this bounds the whole attempt (a slow trickle included). The
            # response body is never read: only the status counts.
            async with asyncio.timeout(timeout):
                async with client.stream("POST", job.url, content=job.body.encode(), headers=headers) as r:
                    status_code = r.status_code
        except TimeoutError:
            return None, f"timed out after {timeout:g}s"
        except httpx.HTTPError as exc:
            return None, (f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__)
        finally:
            if own_client:
                await client.aclose()
        if 200 <= status_code < 300:
            return status_code, None
        return status_code, f"HTTP {status_code}"

    async def _record(self, job: Job, status_code: int | None, error: str | None, duration_ms: int) -> None:
        self.attempted += 1
        attempt_no = job.attempts + 1
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "attempts": attempt_no,
            "last_status_code": status_code,
            "last_error": error,
        }
        if error is None:
            values.update(status="succeeded", delivered_at=now)
        elif attempt_no >= job.max_attempts:
            values.update(status="dead_letter")
        else:
            delay = backoff_seconds(attempt_no, self.settings.delivery_backoff_base_seconds, self._rng)
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        async with self.db.session() as session:
            result = await session.execute(
                update(Delivery)
                .where(Delivery.id == job.id, Delivery.status == "pending")
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if not getattr(result, "rowcount", 0):
                return  # deleted with its endpoint meanwhile: nothing left to record
            session.add(
                DeliveryAttempt(
                    delivery_id=job.id,
                    attempt=attempt_no,
                    at=now,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
            if values.get("status") == "dead_letter":
                data: dict[str, Any] = {
                    "delivery_id": job.id,
                    "kind": job.kind,
                    "source": job.source,
                    "error": error,
                }
                if job.webhook_id is not None:
                    data.update(webhook_id=job.webhook_id, event_type=job.event_type)
                emit(session, FAILED_EVENT, data, job.station_id)
        if self.outcomes is not None:
            outcome = "succeeded" if error is None else values.get("status", "retry")
            self.outcomes.labels(job.kind, outcome).inc()
        if error is None:
            self.succeeded += 1
        elif values.get("status") == "dead_letter":
            self.dead_lettered += 1
            log.warning(
                "delivery %d to %s dead-lettered after %d attempts: %s",
                job.id,
                display_url(job.url),
                attempt_no,
                error,
            )
