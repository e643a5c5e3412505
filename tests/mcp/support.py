"""MCP test helpers: tokens made through the REST API, and the official SDK client over streamable HTTP."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.helpers import StationHandle


async def make_token(
    station: StationHandle,
    scopes: list[str],
    station_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    r = await station.client.post(
        "/api/v1/tokens",
        headers=headers or await station.owner_headers(),
        json={
            "name": f"agent-{'-'.join(s.replace(':', '') for s in scopes)}",
            "scopes": scopes,
            "station_id": station_id,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@contextlib.asynccontextmanager
async def mcp_session(
    station: StationHandle, token: str, **session_options: Any
) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session (the official SDK) against the station's /mcp."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        http,
        streamable_http_client(f"{station.base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write, **session_options) as session,
    ):
        await session.initialize()
        yield session


def result_json(result: Any) -> dict[str, Any]:
    """A tool result's JSON (structured content, or the first text block)."""
    if isinstance(getattr(result, "structured_content", None), dict):
        return dict(result.structured_content)
    return dict(json.loads(result.content[0].text))


def error_text(result: Any) -> str:
    """A tool error's message, without the SDK's "Error executing tool X: " prefix."""
    assert result.is_error, result
    text = str(result.content[0].text)
    return text.split(": ", 1)[1] if text.startswith("Error executing tool ") else text
