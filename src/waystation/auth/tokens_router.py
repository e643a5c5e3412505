"""`/api/v1/tokens`: API tokens for scripts and agents (admin; the token is shown once)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from waystation.audit import service as audit
from waystation.auth import tokens_service
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.models import ApiToken
from waystation.auth.roles import Principal, role_at_least
from waystation.auth.tokens_service import ApiTokenNotFound
from waystation.context import AppContext
from waystation.errors import StationNotFound
from waystation.security.params import RowId
from waystation.security.ratelimit import limit

router = APIRouter(tags=["auth"])


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)
    scopes: list[str] = Field(min_length=1, max_length=10)
    station_id: str | None = Field(default=None, max_length=32)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    station_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


class TokenCreated(TokenOut):
    token: str


def token_out(t: ApiToken) -> TokenOut:
    return TokenOut(
        id=t.id,
        name=t.name,
        prefix=t.prefix,
        scopes=list(t.scopes),
        station_id=t.station_id,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked=t.revoked_at is not None,
    )


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    dependencies=[Depends(limit("token_create", per="caller"))],
)
async def create_token(
    body: TokenCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> TokenCreated:
    """A token acts at one station (the default one unless `station_id` says otherwise); you need the
    admin role there."""
    station_id = body.station_id or ctx.default_station_id
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), "admin")
    async with ctx.db.session() as session:
        row, plaintext = await tokens_service.create_token(
            session,
            name=body.name,
            scopes=body.scopes,
            station_id=station_id,
            user_id=principal.id if principal.kind == "user" and isinstance(principal.id, int) else None,
        )
        audit.record(
            session,
            actor=principal.actor,
            action="token.create",
            target=f"token:{row.id}",
            summary=f"{body.name!r} with {', '.join(row.scopes)}",
            ip=client_ip(request),
            station_id=station_id,
        )
        return TokenCreated(**token_out(row).model_dump(), token=plaintext)


@router.get("/tokens")
async def list_tokens(
    principal: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[TokenOut]]:
    async with ctx.db.session() as session:
        rows = await tokens_service.list_tokens(session)
        return {"items": [token_out(t) for t in rows if _manages(principal, t.station_id)]}


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(
    token_id: RowId,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    async with ctx.db.session() as session:
        row = await tokens_service.revoke_token(session, token_id)
        if not _manages(principal, row.station_id):
            raise ApiTokenNotFound(f"No API token {token_id}.")  # rolls the revocation back
        audit.record(
            session,
            actor=principal.actor,
            action="token.revoke",
            target=f"token:{row.id}",
            summary=f"revoked {row.name!r}",
            ip=client_ip(request),
            station_id=row.station_id,
        )
    return Response(status_code=204)


def _manages(principal: Principal, station_id: str | None) -> bool:
    """Installation admins manage every token; station admins those of their stations."""
    if station_id is None:
        return principal.visible_stations is None
    return role_at_least(principal.role_at(station_id) or "viewer", "admin")
