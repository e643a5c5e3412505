"""The `/mcp` endpoint: the SDK's MCP server over streamable HTTP, its token check, and the audit row
and metric every tool call and resource read leaves.

Stateful streamable HTTP (the SDK's default): a session carries the client's capabilities, which
elicitation needs, and the session's owner is bound to the token that opened it. Confirmations live in
the database, so a person may approve on any worker; the waiting tool call polls for the decision.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult
from prometheus_client import CollectorRegistry, Counter
from starlette.routing import Route

from waystation import __version__
from waystation.audit import service as audit
from waystation.config import Settings
from waystation.context import AppContext
from waystation.mcp.auth import ExplainingAuth, McpAccess, StationTokenVerifier
from waystation.mcp.views import redact

log = logging.getLogger(__name__)

# What the running call ended as, beyond ok/error (pending, denied, forbidden…): set by the tool,
# read by the audit middleware around it.
_outcome: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("mcp_outcome", default=None)


def note_outcome(outcome: str) -> None:
    holder = _outcome.get()
    if holder is not None:
        holder["outcome"] = outcome


def current_access() -> McpAccess | None:
    token = get_access_token()
    return token if isinstance(token, McpAccess) else None


class McpEndpoint:
    """Builds the MCP server once per app; `route()` mounts it, `running()` belongs in the lifespan."""

    def __init__(
        self, settings: Settings, get_ctx: Callable[[], AppContext], registry: CollectorRegistry
    ) -> None:
        from waystation.mcp import resources, tools  # they import this module for note_outcome

        self.get_ctx = get_ctx
        self.verifier = StationTokenVerifier(get_ctx)
        self.calls = Counter(
            "waystation_mcp_calls_total",
            "MCP tool calls and resource reads, by tool and outcome",
            ["tool", "outcome"],
            registry=registry,
        )
        self.server: MCPServer[Any] = MCPServer(
            name="waystation",
            title="Waystation",
            instructions=resources.INSTRUCTIONS,
            version=__version__,
            token_verifier=self.verifier,
            auth=AuthSettings(issuer_url=_issuer(settings), resource_server_url=None),
        )
        tools.register(self.server, get_ctx)
        resources.register(self.server, get_ctx)
        self.tool_names = frozenset(t.name for t in self.server._tool_manager.list_tools())
        self.server.middleware.append(self._audit)
        sdk_app = self.server.streamable_http_app(
            streamable_http_path="/mcp", transport_security=_transport_security(settings)
        )
        self.asgi = ExplainingAuth(sdk_app, self.verifier)

    def route(self) -> Route:
        return Route("/mcp", self.asgi, methods=["GET", "POST", "DELETE"])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The SDK's session manager (its task group holds the sessions) for the app's lifetime."""
        async with self.server.session_manager.run():
            yield

    async def _audit(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Every tool call and resource read: one audit row and one count, whatever the outcome."""
        if ctx.method not in ("tools/call", "resources/read"):
            return await call_next(ctx)
        params = ctx.params if isinstance(ctx.params, dict) else {}
        holder: dict[str, str] = {}
        mark = _outcome.set(holder)
        started = time.perf_counter()
        failed = True
        try:
            result = await call_next(ctx)
            failed = (isinstance(result, CallToolResult) and result.is_error) or (
                isinstance(result, dict) and result.get("isError") is True
            )
            return result
        finally:
            _outcome.reset(mark)
            outcome = holder.get("outcome") or ("error" if failed else "ok")
            with suppress(Exception):
                await self._record(ctx.method, params, outcome, time.perf_counter() - started)

    async def _record(self, method: str, params: dict[str, Any], outcome: str, seconds: float) -> None:
        access = current_access()
        if method == "tools/call":
            name = str(params.get("name", ""))
            label = name if name in self.tool_names else "unknown"
            target = f"tool:{name}"[:200]
            arguments = json.dumps(redact(params.get("arguments") or {}), default=str)
        else:
            label, target, arguments = "resource", str(params.get("uri", ""))[:200], ""
        self.calls.labels(tool=label, outcome=outcome).inc()
        if access is None:
            return
        async with self.get_ctx().db.session() as session:
            audit.record(
                session,
                actor=access.actor,
                action="mcp.tool" if method == "tools/call" else "mcp.resource",
                target=target,
                summary=f"{outcome} in {seconds * 1000:.0f} ms {arguments}"[:1000],
                station_id=access.station_id,
            )


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _transport_security(settings: Settings) -> TransportSecuritySettings | None:
    """The SDK's DNS-rebinding guard for a station on loopback: `Host` and `Origin` must name loopback
    or the public URL (`WAYSTATION_PUBLIC_URL`, e.g. behind a reverse proxy on the same machine)."""
    if settings.http_host not in LOOPBACK_HOSTS:
        return None
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if settings.public_url:
        public = urlsplit(settings.public_url)
        if public.hostname:
            hosts += [public.netloc, f"{public.hostname}:*"]
            origins += [f"{public.scheme}://{public.netloc}"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def _issuer(settings: Settings) -> str:
    """Only advertised with an authorization server, which Waystation is not: tokens come from
    `POST /api/v1/tokens`. The SDK still wants a well-formed URL."""
    url = settings.base_url
    return url if not url.endswith(":0") else url[:-2]
