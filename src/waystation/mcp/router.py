"""`/api/v1/mcp/confirmations`: the writes agents asked for, and a person's approve or deny.

Anyone who sees a station sees its confirmations; deciding one needs a user (never a token) holding
the role the action itself needs there (admin for rules, an installation admin for flows).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query

from waystation.auth.deps import get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.errors import McpConfirmationNotFound
from waystation.mcp import confirmations

router = APIRouter(tags=["mcp"])

ConfirmationId = Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


@router.get("/mcp/confirmations")
async def list_confirmations(
    status: Literal["pending", "approved", "denied", "expired", "executed", "failed", "all"] = Query(
        default="pending"
    ),
    station_id: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=50, ge=1, le=500),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Newest first; pending ones by default."""
    stations = principal.visible_stations
    if station_id is not None:
        stations = frozenset({station_id}) if stations is None or station_id in stations else frozenset()
    rows = await confirmations.list_confirmations(
        ctx, stations=stations, status=None if status == "all" else status, limit=limit
    )
    return {"items": [confirmations.confirmation_out(r) for r in rows]}


async def _visible(ctx: AppContext, principal: Principal, confirmation_id: str) -> Any:
    row = await confirmations.get(ctx, confirmation_id)
    if principal.role_at(row.station_id) is None:
        raise McpConfirmationNotFound(f"No confirmation {confirmation_id!r}.")
    return row


@router.get("/mcp/confirmations/{confirmation_id}")
async def get_confirmation(
    confirmation_id: str = ConfirmationId,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    return confirmations.confirmation_out(await _visible(ctx, principal, confirmation_id))


@router.post("/mcp/confirmations/{confirmation_id}/approve")
async def approve(
    confirmation_id: str = ConfirmationId,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """Run the action once, as you, on the agent's behalf; answers the confirmation with its result
    (`executed`) or error (`failed`)."""
    row = await confirmations.decide(ctx, principal, confirmation_id, approve=True)
    return confirmations.confirmation_out(row)


@router.post("/mcp/confirmations/{confirmation_id}/deny")
async def deny(
    confirmation_id: str = ConfirmationId,
    principal: Principal = Depends(require("member")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    row = await confirmations.decide(ctx, principal, confirmation_id, approve=False)
    return confirmations.confirmation_out(row)
