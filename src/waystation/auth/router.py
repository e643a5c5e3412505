"""HTTP routes: login, refresh, logout, me, first-run setup, users."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from waystation.audit import service as audit
from waystation.auth import service
from waystation.auth.deps import client_ip, current_principal, get_ctx, require
from waystation.auth.models import User
from waystation.auth.roles import Principal, role_at_least
from waystation.auth.schemas import (
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    SetupRequest,
    SetupStatus,
    TokenPair,
    UserCreate,
    UserOut,
    UserUpdate,
)
from waystation.context import AppContext
from waystation.errors import InsufficientRole, UserNotFound

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


@router.post("/auth/refresh", response_model=TokenPair)
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
        audit.record(
            session,
            actor=principal.actor,
            action="auth.logout",
            target=f"user:{principal.id}",
            summary="logged out",
            ip=client_ip(request),
        )
    return Response(status_code=204)


@router.get("/auth/me", response_model=UserOut)
async def me(
    principal: Principal = Depends(current_principal), ctx: AppContext = Depends(get_ctx)
) -> UserOut:
    if principal.kind != "user":
        raise InsufficientRole("GET /auth/me is for user sessions; this caller is an API token.")
    async with ctx.db.session() as session:
        user = await session.get(User, principal.id)
        if user is None:
            raise UserNotFound("Your account no longer exists.")
        return user_out(user)


@router.get("/auth/setup", response_model=SetupStatus)
async def setup_status(ctx: AppContext = Depends(get_ctx)) -> SetupStatus:
    async with ctx.db.session() as session:
        return SetupStatus(needed=await service.setup_needed(session))


@router.post("/auth/setup", response_model=TokenPair, status_code=201)
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
    _: Principal = Depends(require("admin")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, list[UserOut]]:
    async with ctx.db.session() as session:
        return {"items": [user_out(u) for u in await service.list_users(session)]}


@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(
    body: UserCreate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> UserOut:
    if body.role == "owner" and principal.role != "owner":
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
    username: str,
    body: UserUpdate,
    request: Request,
    principal: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> UserOut:
    async with ctx.db.session() as session:
        user = await service.get_user(session, username)
        # Nobody changes an account ranked above their own, and only owners make owners.
        if not role_at_least(principal.role, user.role) or (
            body.role == "owner" and principal.role != "owner"
        ):
            raise InsufficientRole("You cannot change an account ranked above yours.")
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
        audit.record(
            session,
            actor=principal.actor,
            action="user.update",
            target=f"user:{user.id}",
            summary=", ".join(changes) or "no change",
            ip=client_ip(request),
        )
        return user_out(user)
