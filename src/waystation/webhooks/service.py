"""Webhook and delivery use cases: validated CRUD, secrets, test pings, delivery history, redelivery."""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.config import Settings
from waystation.errors import (
    BadRequest,
    DeliveryNotFound,
    DeliveryNotRedeliverable,
    WebhookInvalid,
    WebhookNotFound,
)
from waystation.secrets_box import SecretBox
from waystation.station import service as stations
from waystation.webhooks.delivery import LEASE_MARGIN_SECONDS, host_allowed, new_delivery
from waystation.webhooks.events import TEST_EVENT, check_patterns
from waystation.webhooks.models import Delivery, DeliveryAttempt, Webhook
from waystation.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    WebhookCreate,
    WebhookOut,
    WebhookUpdate,
)
from waystation.webhooks.signing import new_secret


def webhook_out(hook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=hook.id,
        station_id=hook.station_id,
        url=hook.url,
        event_types=list(hook.event_types or []),
        description=hook.description,
        enabled=hook.enabled,
        max_concurrency=hook.max_concurrency,
        created_at=hook.created_at,
        updated_at=hook.updated_at,
    )


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(str(row_id).encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        value = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The cursor is not valid.") from exc
    if not 0 < value <= 2**63 - 1:  # beyond the database's integer range
        raise BadRequest("The cursor is not valid.")
    return value


def check_url(url: str, allowed_hosts: Sequence[str]) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise WebhookInvalid("url: not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookInvalid("url: must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would be shown by every GET; the signature authenticates the station.
        raise WebhookInvalid("url: must not contain a user name or password")
    if port == 0:
        raise WebhookInvalid("url: port 0 is not valid")
    if not host_allowed(url, allowed_hosts):
        raise WebhookInvalid("url: this host is not allowed (WAYSTATION_DELIVERY_ALLOWED_HOSTS)")


def _check_patterns(patterns: list[str]) -> list[str]:
    problem = check_patterns(patterns)
    if problem:
        raise WebhookInvalid(problem)
    return list(dict.fromkeys(patterns))  # duplicates dropped, order kept


# --- endpoints ------------------------------------------------------------------------------------------


async def list_webhooks(
    session: AsyncSession,
    *,
    stations: Collection[str] | None,
    station_id: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Webhook], str | None]:
    """Endpoints in id order; `stations` None means every endpoint (installation-wide ones too)."""
    query = select(Webhook).order_by(Webhook.id).limit(limit + 1)
    if stations is not None:
        query = query.where(Webhook.station_id.in_(list(stations)))
    if station_id:
        query = query.where(Webhook.station_id == station_id)
    if cursor:
        query = query.where(Webhook.id > decode_cursor(cursor))
    rows = list((await session.scalars(query)).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def get_webhook(session: AsyncSession, hook_id: int) -> Webhook:
    hook = await session.get(Webhook, hook_id)
    if hook is None:
        raise WebhookNotFound(f"No webhook {hook_id}.")
    return hook


async def create_webhook(
    session: AsyncSession, box: SecretBox, settings: Settings, body: WebhookCreate, station_id: str | None
) -> tuple[Webhook, str]:
    """The new endpoint and its secret (returned once; only its sealed form is stored)."""
    check_url(body.url, settings.delivery_allowed_hosts)
    patterns = _check_patterns(body.event_types)
    if station_id is not None:
        await stations.get_station(session, station_id)
    secret = new_secret()
    now = datetime.now(UTC)
    hook = Webhook(
        station_id=station_id,
        url=body.url,
        event_types=patterns,
        secret_sealed=box.seal(secret),
        enabled=body.enabled,
        max_concurrency=body.max_concurrency,
        description=body.description,
        created_at=now,
        updated_at=now,
    )
    session.add(hook)
    await session.flush()
    return hook, secret


async def update_webhook(
    session: AsyncSession, settings: Settings, hook: Webhook, body: WebhookUpdate
) -> list[str]:
    """Apply the fields sent; return their names. A new URL also applies to the endpoint's deliveries
    not yet succeeded, so fixing a wrong URL and redelivering works."""
    changed: list[str] = []
    if body.url is not None and body.url != hook.url:
        check_url(body.url, settings.delivery_allowed_hosts)
        hook.url = body.url
        await session.execute(
            update(Delivery)
            .where(Delivery.webhook_id == hook.id, Delivery.status != "succeeded")
            .values(url=body.url)
            .execution_options(synchronize_session=False)
        )
        changed.append("url")
    if body.event_types is not None:
        hook.event_types = _check_patterns(body.event_types)
        changed.append("event_types")
    if body.description is not None:
        hook.description = body.description
        changed.append("description")
    if body.enabled is not None:
        hook.enabled = body.enabled
        changed.append("enabled")
    if body.max_concurrency is not None:
        hook.max_concurrency = body.max_concurrency
        changed.append("max_concurrency")
    if changed:
        hook.updated_at = datetime.now(UTC)
    return changed


def rotate_secret(hook: Webhook, box: SecretBox) -> str:
    """A new secret; the old one stops signing at once (attempts from now on, retries included)."""
    secret = new_secret()
    hook.secret_sealed = box.seal(secret)
    hook.updated_at = datetime.now(UTC)
    return secret


def create_test_delivery(session: AsyncSession, settings: Settings, hook: Webhook) -> Delivery:
    """A `webhook.test` delivery, created claimed (its `next_attempt_at` a lease ahead) so the caller
    attempts it at once and the background sender leaves it alone; failures retry as usual."""
    now = datetime.now(UTC)
    data: dict[str, object] = {"webhook_id": hook.id}
    if hook.station_id is not None:
        data["station_id"] = hook.station_id
    body = orjson.dumps(
        {"type": TEST_EVENT, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}
    ).decode()
    return new_delivery(
        session,
        kind="webhook",
        source=str(hook.id),
        ordering_key=f"webhook:{hook.id}",
        url=hook.url,
        body=body,
        max_attempts=settings.delivery_max_attempts,
        webhook_id=hook.id,
        event_type=TEST_EVENT,
        next_attempt_at=now + timedelta(seconds=settings.delivery_timeout_seconds + LEASE_MARGIN_SECONDS),
    )


# --- deliveries -----------------------------------------------------------------------------------------


async def get_delivery(session: AsyncSession, delivery_id: int) -> Delivery:
    delivery = await session.get(Delivery, delivery_id)
    if delivery is None:
        raise DeliveryNotFound(f"No delivery {delivery_id}.")
    return delivery


async def list_deliveries(
    session: AsyncSession, hook_id: int, limit: int, cursor: str | None
) -> tuple[list[DeliveryOut], str | None]:
    query = (
        select(Delivery).where(Delivery.webhook_id == hook_id).order_by(Delivery.id.desc()).limit(limit + 1)
    )
    if cursor:
        query = query.where(Delivery.id < decode_cursor(cursor))
    rows = list((await session.scalars(query)).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return await deliveries_out(session, rows[:limit]), next_cursor


async def deliveries_out(session: AsyncSession, rows: Sequence[Delivery]) -> list[DeliveryOut]:
    """Deliveries with their attempts (status code, duration, error; never headers or secrets)."""
    attempts: dict[int, list[AttemptOut]] = {d.id: [] for d in rows}
    if rows:
        for a in (
            await session.scalars(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.delivery_id.in_(list(attempts)))
                .order_by(DeliveryAttempt.id)
            )
        ).all():
            attempts[a.delivery_id].append(
                AttemptOut(
                    attempt=a.attempt,
                    at=a.at,
                    status_code=a.status_code,
                    duration_ms=a.duration_ms,
                    error=a.error,
                )
            )
    return [
        DeliveryOut(
            id=d.id,
            kind=d.kind,
            source=d.source,
            webhook_id=d.webhook_id,
            event_type=d.event_type,
            message_id=d.message_id,
            status=d.status,
            attempts=d.attempts,
            max_attempts=d.max_attempts,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            attempt_log=attempts[d.id],
        )
        for d in rows
    ]


async def redeliver(session: AsyncSession, delivery: Delivery) -> None:
    """Back to pending with its attempts reset, due at once. Only dead letters: a pending delivery is
    still being retried, and a succeeded one was received (receivers deduplicate on `webhook-id`, which
    a redelivery keeps)."""
    if delivery.status != "dead_letter":
        raise DeliveryNotRedeliverable(
            f"Delivery {delivery.id} is {delivery.status}; only a dead_letter delivery can be redelivered."
        )
    result = await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.status == "dead_letter")
        .values(
            status="pending",
            attempts=0,
            next_attempt_at=datetime.now(UTC),
            last_status_code=None,
            last_error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):  # redelivered by someone else a moment ago
        raise DeliveryNotRedeliverable(f"Delivery {delivery.id} is no longer a dead letter.")
