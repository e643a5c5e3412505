"""HTTP routes for webhooks and deliveries (docs/webhooks.md).

A station's endpoints are managed by that station's admins (and installation admins); installation-wide
endpoints (no station) by installation admins only. To everyone else they answer 404, as if absent.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal, role_at_least
from waystation.context import AppContext
from waystation.db import after_commit
from waystation.errors import (
    DeliveryNotFound,
    InsufficientRole,
    ServiceUnavailable,
    StationNotFound,
    WebhookNotFound,
)
from waystation.security.params import RowId
from waystation.webhooks import service
from waystation.webhooks.delivery import DeliveryDispatcher, display_url
from waystation.webhooks.models import Delivery, Webhook
from waystation.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    WebhookCreate,
    WebhookOut,
    WebhookPage,
    WebhookUpdate,
    WebhookWithSecret,
)

router = APIRouter(tags=["webhooks"])


def dispatcher(ctx: AppContext) -> DeliveryDispatcher:
    if ctx.deliveries is None:
        raise ServiceUnavailable("The delivery dispatcher is not running.")
    return ctx.deliveries


def is_installation_admin(principal: Principal) -> bool:
    return principal.station_roles is None and role_at_least(principal.role, "admin")


def can_manage(principal: Principal, station_id: str | None) -> bool:
    if station_id is None:
        return is_installation_admin(principal)
    role = principal.role_at(station_id)
    return role is not None and role_at_least(role, "admin")


async def visible_webhook(session: AsyncSession, principal: Principal, hook_id: int) -> Webhook:
    """The endpoint, if the caller manages its station. Endpoints are admin business: to anyone else
    (viewers and members of that station included) they answer 404, as if absent."""
    hook = await service.get_webhook(session, hook_id)
    if not can_manage(principal, hook.station_id):
        raise WebhookNotFound(f"No webhook {hook_id}.")
    return hook


def _follow(session: AsyncSession, ctx: AppContext, hook: Webhook) -> None:
    """After the commit, let the fan-out see the endpoint as it now is (before the response is sent)."""
    fanout = ctx.webhooks
    if fanout is not None:
        after_commit(session, lambda: fanout.apply(hook))


def _summary(hook: Webhook) -> str:
    return f"{display_url(hook.url)} for {', '.join(hook.event_types or [])}"[:500]


def _with_secret(hook: Webhook, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**service.webhook_out(hook).model_dump(), secret=secret)


@router.get("/webhooks", response_model=WebhookPage)
async def list_webhooks(
    station_id: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> WebhookPage:
    visible = None
    if principal.station_roles is not None:
        visible = [s for s, role in principal.station_roles.items() if role_at_least(role, "admin")]
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_webhooks(
            session, stations=visible, station_id=station_id, limit=limit, cursor=cursor
        )
        return WebhookPage(items=[service.webhook_out(h) for h in rows], next_cursor=next_cursor)


@router.post("/webhooks", response_model=WebhookWithSecret, status_code=201)
async def create_webhook(
    body: WebhookCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> WebhookWithSecret:
    """Create an endpoint. The answer carries its `secret` (`whsec_…`): the only time it is shown."""
    if "station_id" in body.model_fields_set and body.station_id is None:
        station_id = None
        if not is_installation_admin(principal):
            raise InsufficientRole("Installation-wide webhooks (station_id null) need an installation admin.")
    else:
        station_id = body.station_id or ctx.default_station_id
        check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "admin")
    async with ctx.db.session() as session:
        hook, secret = await service.create_webhook(session, ctx.box, ctx.settings, body, station_id)
        audit.record(
            session,
            actor=principal.actor,
            action="webhook.create",
            target=f"webhook:{hook.id}",
            summary=_summary(hook),
            ip=client_ip(request),
            station_id=hook.station_id,
        )
        _follow(session, ctx, hook)
        return _with_secret(hook, secret)


@router.get("/webhooks/{hook_id}", response_model=WebhookOut)
async def get_webhook(
    hook_id: RowId, principal: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> WebhookOut:
    async with ctx.db.session() as session:
        return service.webhook_out(await visible_webhook(session, principal, hook_id))


@router.patch("/webhooks/{hook_id}", response_model=WebhookOut)
async def update_webhook(
    hook_id: RowId,
    body: WebhookUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> WebhookOut:
    async with ctx.db.session() as session:
        hook = await visible_webhook(session, principal, hook_id)
        changed = await service.update_webhook(session, ctx.settings, hook, body)
        audit.record(
            session,
            actor=principal.actor,
            action="webhook.update",
            target=f"webhook:{hook.id}",
            summary=f"changed {', '.join(changed) or 'nothing'}",
            ip=client_ip(request),
            station_id=hook.station_id,
        )
        _follow(session, ctx, hook)
        if ctx.deliveries is not None and ("enabled" in changed or "max_concurrency" in changed):
            after_commit(session, ctx.deliveries.wake)  # held deliveries may go now
        return service.webhook_out(hook)


@router.delete("/webhooks/{hook_id}", status_code=204)
async def delete_webhook(
    hook_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """Delete an endpoint with its deliveries (pending ones are not sent)."""
    async with ctx.db.session() as session:
        hook = await visible_webhook(session, principal, hook_id)
        await session.delete(hook)
        audit.record(
            session,
            actor=principal.actor,
            action="webhook.delete",
            target=f"webhook:{hook_id}",
            summary=_summary(hook),
            ip=client_ip(request),
            station_id=hook.station_id,
        )
        fanout = ctx.webhooks
        if fanout is not None:
            after_commit(session, lambda: fanout.forget(hook_id))
    return Response(status_code=204)


@router.post("/webhooks/{hook_id}/rotate-secret", response_model=WebhookWithSecret)
async def rotate_secret(
    hook_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> WebhookWithSecret:
    """A new secret, shown once. Every attempt from now on (retries too) is signed with it only."""
    async with ctx.db.session() as session:
        hook = await visible_webhook(session, principal, hook_id)
        secret = service.rotate_secret(hook, ctx.box)
        audit.record(
            session,
            actor=principal.actor,
            action="webhook.rotate_secret",
            target=f"webhook:{hook.id}",
            summary="new signing secret",
            ip=client_ip(request),
            station_id=hook.station_id,
        )
        return _with_secret(hook, secret)


@router.post("/webhooks/{hook_id}/test", response_model=DeliveryOut)
async def ping_webhook(
    hook_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DeliveryOut:
    """Send a `webhook.test` ping now (also to a disabled endpoint) and answer the delivery with its
    first attempt. A failed ping is retried like any delivery."""
    sender = dispatcher(ctx)
    async with ctx.db.session() as session:
        hook = await visible_webhook(session, principal, hook_id)
        delivery = service.create_test_delivery(session, ctx.settings, hook)
        audit.record(
            session,
            actor=principal.actor,
            action="webhook.test",
            target=f"webhook:{hook.id}",
            summary=f"ping to {display_url(hook.url)}",
            ip=client_ip(request),
            station_id=hook.station_id,
        )
    await sender.deliver_now(delivery.id)
    async with ctx.db.session() as session:
        sent = await service.get_delivery(session, delivery.id)
        return (await service.deliveries_out(session, [sent]))[0]


@router.get("/webhooks/{hook_id}/deliveries", response_model=DeliveryPage)
async def webhook_deliveries(
    hook_id: RowId,
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with its attempts."""
    async with ctx.db.session() as session:
        await visible_webhook(session, principal, hook_id)
        items, next_cursor = await service.list_deliveries(session, hook_id, limit, cursor)
        return DeliveryPage(items=items, next_cursor=next_cursor)


async def _check_delivery(session: AsyncSession, principal: Principal, delivery: Delivery) -> None:
    if delivery.webhook_id is not None:
        hook = await session.get(Webhook, delivery.webhook_id)
        if hook is None or not can_manage(principal, hook.station_id):
            raise DeliveryNotFound(f"No delivery {delivery.id}.")
    elif not is_installation_admin(principal):
        # Flow endpoints are installation-wide, like the flows themselves.
        held = principal.global_role or "none"
        raise InsufficientRole(f"Flow deliveries need the installation-wide admin role; you have {held}.")


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut)
async def get_delivery(
    delivery_id: RowId, principal: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> DeliveryOut:
    async with ctx.db.session() as session:
        delivery = await service.get_delivery(session, delivery_id)
        await _check_delivery(session, principal, delivery)
        return (await service.deliveries_out(session, [delivery]))[0]


@router.post("/deliveries/{delivery_id}/redeliver", response_model=DeliveryOut)
async def redeliver(
    delivery_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> DeliveryOut:
    """Send a dead-lettered delivery again: back to pending with its attempts reset, same `webhook-id`."""
    sender = dispatcher(ctx)
    async with ctx.db.session() as session:
        delivery = await service.get_delivery(session, delivery_id)
        await _check_delivery(session, principal, delivery)
        await service.redeliver(session, delivery)
        station_id = None
        if delivery.webhook_id is not None:
            hook = await session.get(Webhook, delivery.webhook_id)
            station_id = hook.station_id if hook is not None else None
        audit.record(
            session,
            actor=principal.actor,
            action="delivery.redeliver",
            target=f"delivery:{delivery.id}",
            summary=f"{delivery.kind} {delivery.source} to {display_url(delivery.url)}",
            ip=client_ip(request),
            station_id=station_id,
        )
        after_commit(session, sender.wake)
    async with ctx.db.session() as session:
        fresh = await service.get_delivery(session, delivery_id)
        return (await service.deliveries_out(session, [fresh]))[0]
