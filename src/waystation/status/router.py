"""Health (`/healthz`), readiness (`/readyz`), Prometheus `/metrics`, and `/api/v1/status/ingest`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from waystation import __version__
from waystation.auth.deps import get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.devices.protocol import REJECTION_REASONS

probes = APIRouter(tags=["status"])
router = APIRouter(tags=["status"])


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@probes.get("/readyz")
async def readyz(ctx: AppContext = Depends(get_ctx)) -> JSONResponse:
    database = await ctx.db.ping()
    broker = bool(ctx.mqtt and ctx.mqtt.connected)
    body = {
        "status": "ready" if database and broker else "not_ready",
        "database": "ok" if database else "unreachable",
        "broker": "ok" if broker else "unreachable",
        "broker_error": None if broker or ctx.mqtt is None else ctx.mqtt.last_error,
    }
    return JSONResponse(body, status_code=200 if database and broker else 503)


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/status/ingest")
async def ingest_status(
    request: Request, _: Principal = Depends(require("viewer")), ctx: AppContext = Depends(get_ctx)
) -> dict[str, Any]:
    m = request.app.state.metrics
    link = ctx.mqtt
    return {
        "accepted": dict(m.accepted),
        "rejected": {reason: m.rejected.get(reason, 0) for reason in REJECTION_REASONS},
        "mqtt": {
            "connected": bool(link and link.connected),
            "broker": link.endpoint.display() if link else None,
            "received": link.received if link else 0,
            "handler_errors": link.handler_errors if link else 0,
            "inbox_depth": link.inbox_depth if link else 0,
            "last_error": link.last_error if link else None,
        },
        "embedded_broker": (
            {"kind": ctx.broker.kind, "running": ctx.broker.running, "restarts": ctx.broker.restarts}
            if ctx.broker
            else None
        ),
        "devices_online": sum(1 for d in ctx.devices.known.values() if d.status == "online")
        if ctx.devices
        else 0,
        "uptime_seconds": round(time.time() - ctx.started_at, 1),
    }
