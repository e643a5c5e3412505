"""`GET /api/v1/audit` with filters and cursor paging."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from waystation.audit import service
from waystation.auth.deps import get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def list_audit(
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=100),
    actor: str | None = Query(default=None, max_length=120),
    action: str | None = Query(default=None, max_length=80),
    _: Principal = Depends(require("admin")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_entries(
            session, limit=limit, cursor=cursor, actor=actor, action=action
        )
        return {"items": [service.entry_to_dict(r) for r in rows], "next_cursor": next_cursor}
