"""`GET /api/v1/status/cluster`: which worker answered, which one leads, which ones are alive."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from waystation.auth.deps import get_ctx, require_global
from waystation.auth.roles import Principal
from waystation.context import AppContext

router = APIRouter(tags=["status"])


@router.get("/status/cluster")
async def cluster_status(
    _principal: Principal = Depends(require_global("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    """One process (`WAYSTATION_CLUSTER=off`, SQLite or the embedded broker): `{"mode": "single"}`."""
    if ctx.cluster is None:
        return {"mode": "single", "worker": None, "leader": None, "is_leader": True, "workers": []}
    return {"mode": "workers", **await ctx.cluster.status()}
