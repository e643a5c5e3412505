"""FastAPI dependencies: the app context, the caller, and the least role a route needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from sqlalchemy import select

from waystation.auth.roles import Principal, role_at_least, role_for_scopes
from waystation.auth.security import sha256_hex
from waystation.auth.tokens_service import API_TOKEN_PREFIX, authenticate_token
from waystation.context import AppContext
from waystation.devices.models import Device
from waystation.errors import InsufficientRole, TokenInvalid


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def current_principal(request: Request, ctx: AppContext = Depends(get_ctx)) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise TokenInvalid("Send `Authorization: Bearer <access token or API token>`.")
    if token.startswith(API_TOKEN_PREFIX):
        async with ctx.db.session() as session:
            row = await authenticate_token(session, token)
            role = role_for_scopes(row.scopes)
            if role is None:
                raise InsufficientRole("This token's scopes do not allow the REST API.")
            return Principal(
                kind="token",
                id=row.id,
                name=row.name,
                role=role,
                scopes=tuple(row.scopes),
                station_id=row.station_id,
            )
    claims = ctx.signer.verify(token)
    try:
        user_id = int(claims.sub)
    except ValueError as exc:
        raise TokenInvalid() from exc
    return Principal(kind="user", id=user_id, name=claims.username, role=claims.role)


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the caller, who must hold at least `role`."""

    async def _dependency(principal: Principal = Depends(current_principal)) -> Principal:
        if not role_at_least(principal.role, role):
            raise InsufficientRole(f"This needs the {role} role or higher; you are {principal.role}.")
        return principal

    return _dependency


async def device_principal(request: Request, ctx: AppContext) -> Principal | None:
    """The device named by `X-Device-Token` (or `Device-Token`), if that header is present."""
    token = request.headers.get("x-device-token") or request.headers.get("device-token")
    if not token:
        return None
    async with ctx.db.session() as session:
        row = (
            await session.execute(
                select(Device.id, Device.station_id).where(Device.token_hash == sha256_hex(token))
            )
        ).first()
    if row is None:
        raise TokenInvalid("The device token is unknown.")
    return Principal(kind="device", id=row.id, name=row.id, role="device", station_id=row.station_id)


async def telemetry_writer(request: Request, ctx: AppContext = Depends(get_ctx)) -> Principal:
    """A device with its own token, or a user or API token allowed to write (member and up)."""
    device = await device_principal(request, ctx)
    if device is not None:
        return device
    principal = await current_principal(request, ctx)
    if not role_at_least(principal.role, "member"):
        raise InsufficientRole(f"This needs the member role or higher; you are {principal.role}.")
    return principal


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
