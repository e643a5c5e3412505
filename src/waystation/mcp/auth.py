"""Who an MCP caller is: an API token with an MCP scope, bound to one station, capped by its creator.

The SDK's token-verifier hook does the check on every HTTP request (so a revoked token stops at once).
A thin ASGI layer in front of it answers a refused token with a 401 that says why, instead of the
SDK's bare "Authentication required".
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable

from mcp.server.auth.provider import AccessToken
from sqlalchemy import select
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from waystation.auth.deps import _capped_by_creator
from waystation.auth.models import User
from waystation.auth.roles import GLOBAL_ROLES, Principal
from waystation.auth.tokens_service import API_TOKEN_PREFIX, authenticate_token
from waystation.context import AppContext
from waystation.errors import TokenInvalid

MCP_SCOPES = ("mcp:read", "mcp:write")


class McpAccess(AccessToken):
    """The SDK's access token plus what Waystation needs to scope every call."""

    token_id: int
    token_name: str
    station_id: str
    role: str  # the most this token may do at its station (a write still needs a person to approve it)
    installation_admin: bool  # its creator administers the installation (flows are installation-wide)

    @property
    def can_write(self) -> bool:
        return "mcp:write" in self.scopes

    @property
    def actor(self) -> str:
        return f"mcp:{self.token_id}:{self.token_name}"[:120]

    def principal(self) -> Principal:
        """The token as a read-only caller at its one station."""
        return Principal(
            kind="token",
            id=self.token_id,
            name=self.token_name,
            role="viewer",
            scopes=tuple(self.scopes),
            station_id=self.station_id,
            station_roles={self.station_id: "viewer"},
        )


class StationTokenVerifier:
    """The SDK's `TokenVerifier`: `wst_…` tokens with `mcp:read` or `mcp:write` and a station."""

    def __init__(self, get_ctx: Callable[[], AppContext]) -> None:
        self._get_ctx = get_ctx
        # The ASGI layer below checks the token first; the SDK's backend then finds the answer here
        # instead of reading the database a second time for the same request.
        self._checked: contextvars.ContextVar[tuple[str, McpAccess] | None] = contextvars.ContextVar(
            "mcp_checked_token", default=None
        )

    async def check(self, token: str) -> McpAccess | str:
        """The token's access, or the reason it is refused."""
        if not token.startswith(API_TOKEN_PREFIX):
            return "Send an MCP token: an API token (wst_...) with the mcp:read or mcp:write scope."
        ctx = self._get_ctx()
        try:
            async with ctx.db.session() as session:
                row = await authenticate_token(session, token)
                scopes = [s for s in row.scopes if s in MCP_SCOPES]
                if not scopes:
                    return "This API token has no MCP scope; create one with mcp:read or mcp:write."
                if row.station_id is None:
                    return "This token is not bound to a station; create the MCP token with a station_id."
                role = "admin" if "mcp:write" in scopes else "viewer"
                installation_admin = True  # made by the station agent, which administers everything
                if row.created_by is not None:
                    role = await _capped_by_creator(session, row.created_by, row.station_id, role)
                    creator_role = await session.scalar(select(User.role).where(User.id == row.created_by))
                    installation_admin = creator_role in GLOBAL_ROLES
                token_id, name, station_id = row.id, row.name, row.station_id
        except TokenInvalid as exc:
            return exc.detail
        return McpAccess(
            token=token,
            client_id=f"token:{token_id}",
            subject=str(token_id),
            scopes=scopes,
            token_id=token_id,
            token_name=name,
            station_id=station_id,
            role=role,
            installation_admin=installation_admin,
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        checked = self._checked.get()
        if checked is not None and checked[0] == token:
            return checked[1]
        result = await self.check(token)
        return result if isinstance(result, McpAccess) else None

    def remember(self, token: str, access: McpAccess) -> contextvars.Token[tuple[str, McpAccess] | None]:
        return self._checked.set((token, access))

    def forget(self, mark: contextvars.Token[tuple[str, McpAccess] | None]) -> None:
        self._checked.reset(mark)


class ExplainingAuth:
    """ASGI wrapper around the SDK's app: a missing or refused token gets a 401 with
    `WWW-Authenticate: Bearer error="invalid_token", error_description="<why>"`."""

    def __init__(self, app: ASGIApp, verifier: StationTokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            await _unauthorized(send, "Send Authorization: Bearer <MCP token> (an API token with mcp:read).")
            return
        access = await self.verifier.check(token)
        if isinstance(access, str):
            await _unauthorized(send, access)
            return
        mark = self.verifier.remember(token, access)
        try:
            await self.app(scope, receive, send)
        finally:
            self.verifier.forget(mark)


async def _unauthorized(send: Send, reason: str) -> None:
    quoted = reason.replace("\\", "\\\\").replace('"', "'")
    body = json.dumps({"error": "invalid_token", "error_description": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", f'Bearer error="invalid_token", error_description="{quoted}"'.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
