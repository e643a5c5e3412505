"""FastAPI dependencies: the app context, the caller, and the least role a route needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request

from waystation.auth.roles import Principal, role_at_least
from waystation.context import AppContext
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
        raise TokenInvalid("Send `Authorization: Bearer <access token>`.")
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


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
