"""FastAPI dependencies: the app context, the caller, and the least role a route needs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from sqlalchemy import false, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import RefreshToken, RevokedToken, User
from waystation.auth.roles import GLOBAL_ROLES, ROLE_RANK, Principal, role_at_least, role_for_scopes
from waystation.auth.security import constant_time_equals, sha256_hex
from waystation.auth.service import password_version
from waystation.auth.tokens import AccessClaims
from waystation.auth.tokens_service import API_TOKEN_PREFIX, authenticate_token
from waystation.context import AppContext
from waystation.controller import service as controller_service
from waystation.devices.models import Device
from waystation.errors import InsufficientRole, TokenInvalid, WaystationError
from waystation.station import service as station_service


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
    return await principal_from_token(ctx, token)


async def principal_from_token(ctx: AppContext, token: str) -> Principal:
    """Who a bearer token stands for: the station agent, an API token or a user's access token."""
    if not token:
        raise TokenInvalid("No token was sent.")
    agent_token = ctx.settings.agent_token
    if agent_token and constant_time_equals(token, agent_token):
        # The station agent (PROTOCOLS §11) runs on the same box and manages the station.
        return Principal(kind="agent", id="agent", name="station-agent", role="admin", global_role="admin")
    if token.startswith(API_TOKEN_PREFIX):
        async with ctx.db.session() as session:
            row = await authenticate_token(session, token)
            role = role_for_scopes(row.scopes)
            if role is None:
                raise InsufficientRole("This token's scopes do not allow the REST API.")
            if row.created_by is not None:
                role = await _capped_by_creator(session, row.created_by, row.station_id, role)
            return Principal(
                kind="token",
                id=row.id,
                name=row.name,
                role=role,
                scopes=tuple(row.scopes),
                station_id=row.station_id,
                station_roles={row.station_id: role} if row.station_id else None,
            )
    # The key ring reloads once (rate-limited) for a `kid` this worker has not seen: another worker may
    # have rotated a moment ago.
    claims = await ctx.keys.verify(token) if ctx.keys is not None else ctx.signer.verify(token)
    try:
        user_id = int(claims.sub)
    except ValueError as exc:
        raise TokenInvalid() from exc
    async with ctx.db.session() as session:
        return await user_principal(session, user_id, claims)


async def _capped_by_creator(session: AsyncSession, user_id: int, station_id: str | None, role: str) -> str:
    """A token never has more rights than the user who made it has now: it stops working when that user
    is disabled or loses the station, and acts with at most that user's current role there."""
    creator = (await session.execute(select(User.role, User.disabled).where(User.id == user_id))).first()
    if creator is None or creator.disabled:
        raise TokenInvalid("The user who created this token is disabled or no longer exists.")
    if creator.role in GLOBAL_ROLES:
        held: str | None = creator.role
    else:
        held = (await station_service.memberships_of(session, user_id)).get(station_id or "")
    if held is None:
        raise TokenInvalid("The user who created this token no longer belongs to its station.")
    return role if ROLE_RANK[role] <= ROLE_RANK.get(held, -1) else held


async def user_principal(session: AsyncSession, user_id: int, claims: AccessClaims) -> Principal:
    """A signed access token is only half the check: the account must still exist and be enabled, the
    token must not be revoked (logout), its login (refresh-token family, `sid`) must not have been ended
    (logout, refresh-token reuse), it must not be older than the last password change, and the roles are
    read fresh, so a demotion takes effect at once.

    All of it is one query against the database on every request, with no cache in the process: several
    workers share the database, so a logout or a reuse detected by one is honoured by all at once."""
    denied = select(RevokedToken.jti).where(RevokedToken.jti == claims.jti).exists()
    ended = (
        select(RefreshToken.id)
        .where(RefreshToken.family_id == claims.sid, RefreshToken.revoked_at.is_not(None))
        .exists()
        if claims.sid
        else false()
    )
    user = (
        await session.execute(
            select(
                User.username,
                User.role,
                User.disabled,
                User.password_changed_at,
                denied.label("denied"),
                ended.label("ended"),
            ).where(User.id == user_id)
        )
    ).first()
    if user is None or user.disabled:
        raise TokenInvalid("The account of this token no longer exists or is disabled.")
    if user.denied:
        raise TokenInvalid("This access token was revoked (logged out).")
    if user.ended:
        raise TokenInvalid("This login was ended (logout, or its refresh token was reused); log in again.")
    if claims.pwv != password_version(user.password_changed_at):
        raise TokenInvalid("The password changed after this token was issued; log in again.")
    common = {
        "kind": "user",
        "id": user_id,
        "name": user.username,
        "global_role": user.role,
        "jti": claims.jti,
        "token_expires": claims.exp.timestamp(),
        "session_id": claims.sid,
    }
    if user.role in GLOBAL_ROLES:
        return Principal(role=user.role, station_roles=None, **common)
    memberships = await station_service.memberships_of(session, user_id)
    best = max(memberships.values(), key=lambda r: ROLE_RANK.get(r, -1), default="viewer")
    return Principal(role=best, station_roles=memberships, **common)


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the caller, who must hold at least `role` at some station (routes then check the
    station of the resource with `check_station`)."""

    async def _dependency(principal: Principal = Depends(current_principal)) -> Principal:
        if not role_at_least(principal.role, role):
            raise InsufficientRole(f"This needs the {role} role or higher; you are {principal.role}.")
        return principal

    return _dependency


def require_global(role: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency for installation-wide resources (users, MQTT servers, signing keys, broker sync):
    the caller needs `role` installation-wide, not just at one station."""

    async def _dependency(principal: Principal = Depends(current_principal)) -> Principal:
        held = principal.global_role or "none"
        if principal.global_role is None or not role_at_least(principal.global_role, role):
            raise InsufficientRole(f"This needs the installation-wide {role} role; you have {held}.")
        return principal

    return _dependency


def check_station(
    principal: Principal, station_id: str, missing: WaystationError, needed: str = "viewer"
) -> None:
    """Raise `missing` (a 404) if the caller cannot see the station, so other stations' resources are
    indistinguishable from absent ones; raise 403 if it can see them but its role there is too low."""
    role = principal.role_at(station_id)
    if role is None:
        raise missing
    if not role_at_least(role, needed):
        raise InsufficientRole(f"This needs the {needed} role or higher at this station; you are {role}.")


async def device_principal(request: Request, ctx: AppContext) -> Principal | None:
    """The device named by `X-Device-Token` (or `Device-Token`), if that header is present."""
    token = request.headers.get("x-device-token") or request.headers.get("device-token")
    if not token:
        return None
    async with ctx.db.session() as session:
        row = (
            await session.execute(
                select(Device.id, Device.station_id, Device.enabled).where(
                    Device.token_hash == sha256_hex(token)
                )
            )
        ).first()
    if row is None:
        raise TokenInvalid("The device token is unknown.")
    if not row.enabled:
        raise TokenInvalid("This device is disabled.")
    return Principal(
        kind="device",
        id=row.id,
        name=row.id,
        role="device",
        station_id=row.station_id,
        station_roles={row.station_id: "device"},
    )


async def controller_principal(request: Request, ctx: AppContext) -> Principal | None:
    """The plugin controller named by a `wsc_…` bearer token, if one was sent."""
    token = bearer_token(request)
    if token is None or not token.startswith(controller_service.CONTROLLER_TOKEN_PREFIX):
        return None
    async with ctx.db.session() as session:
        return controller_service.principal_of(await controller_service.authenticate(session, token))


async def telemetry_writer(request: Request, ctx: AppContext = Depends(get_ctx)) -> Principal:
    """A device or a plugin controller with its own token, or a user or API token allowed to write
    (member and up)."""
    device = await device_principal(request, ctx) or await controller_principal(request, ctx)
    if device is not None:
        return device
    principal = await current_principal(request, ctx)
    if not role_at_least(principal.role, "member"):
        raise InsufficientRole(f"This needs the member role or higher; you are {principal.role}.")
    return principal


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class StreamAuth:
    """Keeps a long-lived stream (SSE, WebSocket) honest: the caller's token is checked again every
    `interval` seconds and when it expires, so logout, a password change, disabling the user, revoking
    the token or losing a station ends or narrows the stream instead of letting it run on."""

    def __init__(self, ctx: AppContext, token: str, principal: Principal) -> None:
        self.ctx = ctx
        self.token = token
        self.principal = principal
        self.interval = ctx.settings.stream_reauth_seconds
        self._checked = time.monotonic()

    async def current(self) -> Principal | None:
        """The caller as of now, or None once the token is no longer good."""
        expires = self.principal.token_expires
        due = time.monotonic() - self._checked >= self.interval
        if not due and (expires is None or time.time() < expires):
            return self.principal
        self._checked = time.monotonic()
        try:
            self.principal = await principal_from_token(self.ctx, self.token)
        except WaystationError:
            return None
        return self.principal
