"""HTTP routes of the cloud link (docs/cloud.md): its status, claim and unclaim."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request

from waystation.audit import service as audit
from waystation.auth.deps import client_ip, get_ctx, require, require_global
from waystation.auth.roles import GLOBAL_ROLES, Principal
from waystation.cloud import messages, service
from waystation.cloud.link import CloudLink, display_url
from waystation.cloud.schemas import ClaimRequest, CloudStatusOut
from waystation.context import AppContext
from waystation.db import after_commit
from waystation.errors import CloudNotConfigured, ServiceUnavailable

router = APIRouter(tags=["cloud"])


def link_of(ctx: AppContext) -> CloudLink:
    if ctx.cloud is None:
        raise ServiceUnavailable("The cloud link is not running.")
    return ctx.cloud


async def _status(ctx: AppContext, principal: Principal) -> CloudStatusOut:
    out = CloudStatusOut(**link_of(ctx).status())
    if principal.global_role in GLOBAL_ROLES:
        async with ctx.db.session() as session:
            config = await service.load(session, ctx.box)
        out.chip_id, out.claim_secret = config.chip_id, config.claim_secret
    return out


@router.get("/cloud/status", response_model=CloudStatusOut)
async def cloud_status(
    principal: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> CloudStatusOut:
    """The link's state. Installation owners and admins also see the chip id and claim secret."""
    return await _status(ctx, principal)


@router.post("/cloud/claim", response_model=CloudStatusOut)
async def claim(
    request: Request,
    body: ClaimRequest | None = Body(default=None),
    principal: Principal = Depends(require_global("owner")),
    ctx: AppContext = Depends(get_ctx),
) -> CloudStatusOut:
    """Turn the link on. While the station is unclaimed it sends `claim_handshake` with its chip id and
    claim secret; enter both in the cloud app first. A different `url` forgets the station token (it
    belongs to the old cloud) and drops the current connection."""
    link = link_of(ctx)
    url = body.url if body else None
    async with ctx.db.session() as session:
        row, moved = await service.enable(session, ctx.box, url, ctx.settings.cloud_url)
        effective = row.url or ctx.settings.cloud_url
        if not effective:
            raise CloudNotConfigured('Set WAYSTATION_CLOUD_URL or send {"url": "wss://…"}.')
        audit.record(
            session,
            actor=principal.actor,
            action="cloud.claim",
            target="cloud",
            summary=f"link enabled to {display_url(effective)}"
            + ("; new cloud: station token forgotten" if moved else ""),
            ip=client_ip(request),
        )
        after_commit(session, lambda: link.request_reconfigure(disconnect=moved, reason="cloud URL changed"))
    link.assume(enabled=True, **({"claimed": False, "claimed_at": None} if moved else {}))
    return await _status(ctx, principal)


@router.post("/cloud/unclaim", response_model=CloudStatusOut)
async def unclaim(
    request: Request,
    principal: Principal = Depends(require_global("owner")),
    ctx: AppContext = Depends(get_ctx),
) -> CloudStatusOut:
    """Forget the station token, disconnect, issue a new claim secret and remove the cloud's users."""
    link = link_of(ctx)
    async with ctx.db.session() as session:
        await service.unclaim(session, ctx.box)
        users = await messages.forget_cloud_users(session, ctx.default_station_id)
        audit.record(
            session,
            actor=principal.actor,
            action="cloud.unclaim",
            target="cloud",
            summary=f"station token wiped, claim secret renewed, link disabled; {users}",
            ip=client_ip(request),
        )
        after_commit(session, lambda: link.request_reconfigure(disconnect=True))
    link.assume(claimed=False, claimed_at=None, enabled=False)
    return await _status(ctx, principal)
