"""HTTP routes: login, refresh, logout, me, first-run setup, users."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request, Response

from waystation.audit import service as audit
from waystation.auth import service
from waystation.auth.deps import client_ip, current_principal, get_ctx, require_global
from waystation.auth.keys import KeyRing
from waystation.auth.models import User
from waystation.auth.roles import Principal, role_at_least
from waystation.auth.schemas import (
    LoginRequest,
    LogoutRequest,
    MeOut,
    PasswordChange,
    RefreshRequest,
    SetupRequest,
    SetupStatus,
    SigningKeyOut,
    SigningKeyRotated,
    StationRoleOut,
    TokenPair,
    UserCreate,
    UserOut,
    UserUpdate,
)
from waystation.context import AppContext
from waystation.errors import InsufficientRole, ServiceUnavailable, UserNotFound
from waystation.security.params import NameKey
from waystation.security.ratelimit import address_key, limit, limiter_of
from waystation.station import service as station_service

router = APIRouter(tags=["auth"])


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        created_at=user.created_at,
    )


@router.post("/auth/login", response_model=TokenPair)
async def login(body: LoginRequest, request: Request, ctx: AppContext = Depends(get_ctx)) -> TokenPair:
    # Every attempt counts, before the password is checked, so parallel bursts cannot slip through and
    # a refused guess costs no argon2 work: per address, and per username from any address.
    limiter = limiter_of(request)
    await limiter.hit("login_ip", address_key(request))
    await limiter.hit("login_username", body.username.casefold())
    async with ctx.db.session() as session:
        user = await service.authenticate(session, body.username, body.password)
        pair = await service.issue_pair(session, ctx.signer, user, ctx.settings.refresh_token_days)
        audit.record(
            session,
            actor=f"user:{user.username}",
            action="auth.login",
            target=f"user:{user.id}",
            summary="logged in",
            ip=client_ip(request),
        )
    return pair


@router.post("/auth/refresh", response_model=TokenPair, dependencies=[Depends(limit("refresh"))])
async def refresh(body: RefreshRequest, request: Request, ctx: AppContext = Depends(get_ctx)) -> TokenPair:
    try:
        async with ctx.db.session() as session:
            return await service.refresh(
                session, ctx.signer, body.refresh_token, ctx.settings.refresh_token_days
            )
    except service.RefreshTokenReused as exc:
        async with ctx.db.session() as session:
            await service.revoke_family(session, exc.family_id)
            audit.record(
                session,
                actor="anonymous",
                action="auth.refresh_reuse",
                target=f"family:{exc.family_id}",
                summary="reused refresh token; family revoked",
                ip=client_ip(request),
            )
        raise


@router.post("/auth/logout", status_code=204)
async def logout(
    request: Request,
    body: LogoutRequest | None = None,
    principal: Principal = Depends(current_principal),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    if principal.kind != "user" or not isinstance(principal.id, int):
        raise InsufficientRole(
            "Only a user session can log out; revoke API tokens with DELETE /api/v1/tokens/{id}."
        )
    async with ctx.db.session() as session:
        await service.logout(session, principal.id, body.refresh_token if body else None)
        if principal.session_id is not None:
            await service.revoke_family(session, principal.session_id)  # also without the refresh token
        if principal.jti is not None and principal.token_expires is not None:
            expires = datetime.fromtimestamp(principal.token_expires, UTC)
            await service.revoke_access_token(session, principal.jti, expires)
        audit.record(
            session,
            actor=principal.actor,
            action="auth.logout",
            target=f"user:{principal.id}",
            summary="logged out",
            ip=client_ip(request),
        )
    return Response(status_code=204)


@router.get("/auth/me", response_model=MeOut)
async def me(principal: Principal = Depends(current_principal), ctx: AppContext = Depends(get_ctx)) -> MeOut:
    """Who is logged in, with the role at each station they can see (the UI follows the station's)."""
    if principal.kind != "user":
        raise InsufficientRole("GET /auth/me is for user sessions; this caller is an API token.")
    async with ctx.db.session() as session:
        user = await session.get(User, principal.id)
        if user is None:
            raise UserNotFound("Your account no longer exists.")
        stations = [
            StationRoleOut(id=s.id, name=s.name, is_default=s.is_default, role=role)
            for s in await station_service.list_stations(session)
            if (role := principal.role_at(s.id)) is not None
        ]
        return MeOut(**user_out(user).model_dump(), stations=stations)


@router.get("/auth/setup", response_model=SetupStatus)
async def setup_status(ctx: AppContext = Depends(get_ctx)) -> SetupStatus:
    async with ctx.db.session() as session:
        return SetupStatus(needed=await service.setup_needed(session))


@router.post("/auth/setup", response_model=TokenPair, status_code=201, dependencies=[Depends(limit("setup"))])
async def setup(body: SetupRequest, request: Request, ctx: AppContext = Depends(get_ctx)) -> TokenPair:
    async with ctx.db.session() as session:
        user = await service.complete_setup(session, body.token, body.username, body.password)
        audit.record(
            session,
            actor=f"user:{user.username}",
            action="auth.setup",
            target=f"user:{user.id}",
            summary="created the owner account",
            ip=client_ip(request),
        )
        return await service.issue_pair(session, ctx.signer, user, ctx.settings.refresh_token_days)


# --- users (admin) -----------------------------------------------------------------------------


@router.get("/users", response_model=dict[str, list[UserOut]])
async def list_users(
    _: Principal = Depends(require_global("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[UserOut]]:
    async with ctx.db.session() as session:
        return {"items": [user_out(u) for u in await service.list_users(session)]}


@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(
    body: UserCreate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> UserOut:
    if body.role == "owner" and principal.global_role != "owner":
        raise InsufficientRole("Only an owner can create another owner.")
    async with ctx.db.session() as session:
        user = await service.create_user(session, body.username, body.password, body.role)
        audit.record(
            session,
            actor=principal.actor,
            action="user.create",
            target=f"user:{user.id}",
            summary=f"created {user.username} as {user.role}",
            ip=client_ip(request),
        )
        return user_out(user)


@router.patch("/users/{username}", response_model=UserOut)
async def update_user(
    username: NameKey,
    body: UserUpdate,
    request: Request,
    principal: Principal = Depends(require_global("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> UserOut:
    async with ctx.db.session() as session:
        user = await service.get_user(session, username)
        # Nobody changes an account ranked above their own, and only owners make owners.
        mine = principal.global_role or "viewer"
        if not role_at_least(mine, user.role) or (body.role == "owner" and mine != "owner"):
            raise InsufficientRole("You cannot change an account ranked above yours.")
        if user.role == "owner" and ((body.role is not None and body.role != "owner") or body.disabled):
            await service.keep_an_owner(session, user.id)
        changes = []
        if body.role is not None and body.role != user.role:
            user.role = body.role
            changes.append(f"role={body.role}")
        if body.disabled is not None and body.disabled != user.disabled:
            user.disabled = body.disabled
            changes.append(f"disabled={body.disabled}")
        if body.password is not None:
            await service.set_password(session, user, body.password)
            changes.append("password changed")
        await service.give_default_station(session, user)
        audit.record(
            session,
            actor=principal.actor,
            action="user.update",
            target=f"user:{user.id}",
            summary=", ".join(changes) or "no change",
            ip=client_ip(request),
        )
        return user_out(user)


@router.post("/auth/password", status_code=204, dependencies=[Depends(limit("login_ip"))])
async def change_password(
    body: PasswordChange,
    request: Request,
    principal: Principal = Depends(current_principal),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    """Change your own password. Every session of yours ends (refresh tokens and access tokens issued
    before now); log in again with the new password."""
    if principal.kind != "user" or not isinstance(principal.id, int):
        raise InsufficientRole("Only a user session can change its password.")
    async with ctx.db.session() as session:
        user = await service.authenticate(session, principal.name, body.current_password)
        await service.set_password(session, user, body.new_password)
        audit.record(
            session,
            actor=principal.actor,
            action="auth.password_change",
            target=f"user:{user.id}",
            summary="changed own password",
            ip=client_ip(request),
        )
    return Response(status_code=204)


# --- signing keys (installation owner) ------------------------------------------------------------


@router.get("/auth/keys", response_model=dict[str, list[SigningKeyOut]])
async def list_signing_keys(
    _: Principal = Depends(require_global("owner")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[SigningKeyOut]]:
    """The access-token signing keys (never their secrets): the current one and retired ones that still
    verify tokens until `verify_until`."""
    keys = await key_ring(ctx).list_keys()
    current = ctx.signer.current_kid
    return {
        "items": [
            SigningKeyOut(
                kid=k.kid,
                created_at=k.created_at,
                retired_at=k.retired_at,
                verify_until=k.verify_until,
                current=k.kid == current,
            )
            for k in keys
        ]
    }


@router.post("/auth/keys/rotate", response_model=SigningKeyRotated, status_code=201)
async def rotate_signing_key(
    request: Request,
    principal: Principal = Depends(require_global("owner")),
    ctx: AppContext = Depends(get_ctx),
) -> SigningKeyRotated:
    """Sign new tokens with a fresh key now. Tokens signed by the old key stay valid until they expire."""
    kid = await key_ring(ctx).rotate()
    async with ctx.db.session() as session:
        audit.record(
            session,
            actor=principal.actor,
            action="auth.key_rotate",
            target=f"signing_key:{kid}",
            summary="signing key rotated on demand",
            ip=client_ip(request),
        )
    return SigningKeyRotated(kid=kid)


def key_ring(ctx: AppContext) -> KeyRing:
    if ctx.keys is None:
        raise ServiceUnavailable("The signing-key ring is not loaded yet.")
    return ctx.keys
