"""HTTP routes for dashboards, their widgets and their layout.

Who sees what: a personal dashboard only its owner (who also edits it, whatever their role); a shared
one every member of its station (viewers read, members and up edit). Anything else answers 404, as if
the dashboard did not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.audit import service as audit
from waystation.auth.deps import check_station, client_ip, get_ctx, require
from waystation.auth.roles import Principal
from waystation.context import AppContext
from waystation.dashboards import service
from waystation.dashboards.models import Dashboard
from waystation.dashboards.schemas import (
    DashboardCreate,
    DashboardOut,
    DashboardUpdate,
    LayoutUpdate,
    WidgetCreate,
    WidgetOut,
    WidgetUpdate,
)
from waystation.errors import DashboardNotFound, DashboardOwnerRequired, StationNotFound
from waystation.security.params import RowId
from waystation.station import service as stations

router = APIRouter(tags=["dashboards"])


def _user_id(principal: Principal) -> int | None:
    """The user behind the call; API tokens and the agent have none, so they own no dashboards."""
    return principal.id if principal.kind == "user" and isinstance(principal.id, int) else None


def _owner_or_refuse(principal: Principal) -> int:
    user_id = _user_id(principal)
    if user_id is None:
        raise DashboardOwnerRequired(
            "A personal dashboard belongs to a user; API tokens and the agent create shared ones "
            '("shared": true).'
        )
    return user_id


async def visible_dashboard(
    session: AsyncSession, principal: Principal, dashboard_id: int, *, edit: bool = False
) -> Dashboard:
    """The dashboard if the caller may see it (404 otherwise) and, with `edit`, change it (403 for a
    viewer and a shared dashboard)."""
    dash = await service.get_dashboard(session, dashboard_id)
    missing = DashboardNotFound(f"No dashboard {dashboard_id}.")
    check_station(principal, dash.station_id, missing)
    if not dash.shared:
        if dash.owner_id is None or dash.owner_id != _user_id(principal):
            raise missing
        return dash
    if edit:
        check_station(principal, dash.station_id, missing, "member")
    return dash


def _audit(
    session: AsyncSession,
    principal: Principal,
    request: Request,
    dash: Dashboard,
    action: str,
    summary: str,
) -> None:
    audit.record(
        session,
        actor=principal.actor,
        action=action,
        target=f"dashboard:{dash.id}",
        summary=summary,
        ip=client_ip(request),
        station_id=dash.station_id,
    )


@router.get("/dashboards")
async def list_dashboards(
    station_id: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=100, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    """The shared dashboards of your stations and your own personal ones (without their widgets)."""
    async with ctx.db.session() as session:
        rows, next_cursor = await service.list_dashboards(
            session,
            user_id=_user_id(principal),
            visible_stations=principal.visible_stations,
            station_id=station_id,
            limit=limit,
            cursor=cursor,
        )
        return {
            "items": [service.summary_out(d).model_dump(mode="json") for d in rows],
            "next_cursor": next_cursor,
        }


@router.post("/dashboards", response_model=DashboardOut, status_code=201)
async def create_dashboard(
    body: DashboardCreate,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> DashboardOut:
    """A personal dashboard (any role) or, with `"shared": true`, one for the whole station (member+)."""
    station_id = body.station_id or ctx.default_station_id
    needed = "member" if body.shared else "viewer"
    check_station(principal, station_id, StationNotFound(f"No station {station_id!r}."), needed)
    owner_id = None if body.shared else _owner_or_refuse(principal)
    async with ctx.db.session() as session:
        await stations.get_station(session, station_id)  # an installation admin may name any id
        dash = await service.create_dashboard(session, body, station_id=station_id, owner_id=owner_id)
        kind = "shared" if dash.shared else "personal"
        _audit(
            session, principal, request, dash, "dashboard.create", f"created {kind} dashboard {dash.name!r}"
        )
        return service.dashboard_out(dash, [])


@router.get("/dashboards/{dashboard_id}", response_model=DashboardOut)
async def get_dashboard(
    dashboard_id: RowId,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> DashboardOut:
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id)
        return service.dashboard_out(dash, await service.list_widgets(session, dash.id))


@router.patch("/dashboards/{dashboard_id}", response_model=DashboardOut)
async def update_dashboard(
    dashboard_id: RowId,
    body: DashboardUpdate,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> DashboardOut:
    """Rename, change the grid, or share (`"shared": true`, member+) or take back as your own personal
    dashboard (`"shared": false`, member+; the others stop seeing it)."""
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id, edit=True)
        owner_id = dash.owner_id
        if body.shared is not None and body.shared != dash.shared:
            # Sharing shows the owner's page to the whole station; unsharing hides a station page from it.
            check_station(principal, dash.station_id, DashboardNotFound(), "member")
            owner_id = None if body.shared else _owner_or_refuse(principal)
        changed = await service.update_dashboard(session, dash, body, owner_id=owner_id)
        _audit(
            session,
            principal,
            request,
            dash,
            "dashboard.update",
            f"changed {', '.join(changed) or 'nothing'}",
        )
        return service.dashboard_out(dash, await service.list_widgets(session, dash.id))


@router.delete("/dashboards/{dashboard_id}", status_code=204)
async def delete_dashboard(
    dashboard_id: RowId,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id, edit=True)
        await service.delete_dashboard(session, dash)
        _audit(session, principal, request, dash, "dashboard.delete", f"deleted dashboard {dash.name!r}")
    return Response(status_code=204)


@router.post("/dashboards/{dashboard_id}/widgets", response_model=WidgetOut, status_code=201)
async def add_widget(
    dashboard_id: RowId,
    body: WidgetCreate,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> WidgetOut:
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id, edit=True)
        widget = await service.add_widget(session, dash, body)
        _audit(
            session,
            principal,
            request,
            dash,
            "dashboard.widget_add",
            f"added {widget.kind} widget {widget.id}",
        )
        return service.widget_out(widget)


@router.patch("/dashboards/{dashboard_id}/widgets/{widget_id}", response_model=WidgetOut)
async def update_widget(
    dashboard_id: RowId,
    widget_id: RowId,
    body: WidgetUpdate,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> WidgetOut:
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id, edit=True)
        widget, changed = await service.update_widget(session, dash, widget_id, body)
        _audit(
            session,
            principal,
            request,
            dash,
            "dashboard.widget_update",
            f"changed widget {widget.id}: {', '.join(changed) or 'nothing'}",
        )
        return service.widget_out(widget)


@router.delete("/dashboards/{dashboard_id}/widgets/{widget_id}", status_code=204)
async def delete_widget(
    dashboard_id: RowId,
    widget_id: RowId,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> Response:
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id, edit=True)
        widget = await service.delete_widget(session, dash, widget_id)
        _audit(
            session,
            principal,
            request,
            dash,
            "dashboard.widget_delete",
            f"removed {widget.kind} widget {widget.id}",
        )
    return Response(status_code=204)


@router.put("/dashboards/{dashboard_id}/layout", response_model=DashboardOut)
async def set_layout(
    dashboard_id: RowId,
    body: LayoutUpdate,
    request: Request,
    principal: Principal = Depends(require("viewer")),
    ctx: AppContext = Depends(get_ctx),
) -> DashboardOut:
    """Move and resize every widget in one transaction: list each widget of the dashboard exactly once."""
    async with ctx.db.session() as session:
        dash = await visible_dashboard(session, principal, dashboard_id, edit=True)
        await service.set_layout(session, dash, body)
        _audit(
            session,
            principal,
            request,
            dash,
            "dashboard.layout",
            f"placed {len(body.widgets)} widgets",
        )
        return service.dashboard_out(dash, await service.list_widgets(session, dash.id))
