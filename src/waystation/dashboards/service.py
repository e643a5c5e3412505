"""Dashboard use cases: CRUD of dashboards and widgets, per-kind config checks, bulk layout changes.

Who may see or change a dashboard is the router's business (it knows the caller); this module keeps
the rules that hold for everyone: configs fit their kind, widgets fit the grid, and a widget names only
channels and devices of its dashboard's own station, so sharing a dashboard never shows another
station's data.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.controller import service as controllers
from waystation.dashboards.models import Dashboard, DashboardWidget
from waystation.dashboards.schemas import (
    CONFIG_MODELS,
    MAX_WIDGETS,
    DashboardCreate,
    DashboardLayout,
    DashboardOut,
    DashboardSummary,
    DashboardUpdate,
    DeviceControlConfig,
    EventListConfig,
    GaugeConfig,
    LayoutUpdate,
    LineChartConfig,
    Position,
    StatConfig,
    WidgetCreate,
    WidgetOut,
    WidgetUpdate,
)
from waystation.db import emit, utcnow
from waystation.devices import service as devices
from waystation.devices.models import Device
from waystation.devices.service import decode_cursor, encode_cursor
from waystation.errors import (
    BadRequest,
    ChannelNotFound,
    DashboardNotFound,
    DeviceNotFound,
    LayoutInvalid,
    WidgetConfigInvalid,
    WidgetNotFound,
    WidgetReferenceInvalid,
)
from waystation.security.params import MAX_ROW_ID
from waystation.telemetry import service as telemetry

# --- output --------------------------------------------------------------------------------------


def _layout(dash: Dashboard) -> DashboardLayout:
    return DashboardLayout.model_validate(dash.layout or {})


def summary_out(dash: Dashboard) -> DashboardSummary:
    return DashboardSummary(
        id=dash.id,
        station_id=dash.station_id,
        name=dash.name,
        shared=dash.shared,
        owner_id=dash.owner_id,
        layout=_layout(dash),
        created_at=dash.created_at,
        updated_at=dash.updated_at,
    )


def widget_out(widget: DashboardWidget) -> WidgetOut:
    return WidgetOut(
        id=widget.id,
        dashboard_id=widget.dashboard_id,
        kind=widget.kind,  # only known kinds are stored
        title=widget.title,
        position=Position(x=widget.x, y=widget.y, w=widget.w, h=widget.h),
        config=widget.config or {},
        created_at=widget.created_at,
        updated_at=widget.updated_at,
    )


def dashboard_out(dash: Dashboard, widgets: Sequence[DashboardWidget]) -> DashboardOut:
    return DashboardOut(**summary_out(dash).model_dump(), widgets=[widget_out(w) for w in widgets])


def _announce(session: AsyncSession, dash: Dashboard, event: str, changed: list[str]) -> None:
    # Personal dashboards stay private: bus events reach every member of the station, so only shared
    # dashboards (and one that just stopped being shared, so other views drop it) are announced.
    data = {"dashboard_id": dash.id, "name": dash.name, "shared": dash.shared, "changed": changed}
    emit(session, event, data, dash.station_id)


def _row_id(text: str) -> int:
    # Only ids this module handed out: a number outside the column's range would fail in the driver.
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_ROW_ID:
        raise BadRequest("The cursor is not valid; use the next_cursor of a previous page.")
    return value


# --- dashboards ------------------------------------------------------------------------------------


async def get_dashboard(session: AsyncSession, dashboard_id: int) -> Dashboard:
    dash = await session.get(Dashboard, dashboard_id)
    if dash is None:
        raise DashboardNotFound(f"No dashboard {dashboard_id}.")
    return dash


async def list_dashboards(
    session: AsyncSession,
    *,
    user_id: int | None,
    visible_stations: Collection[str] | None,
    station_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[Sequence[Dashboard], str | None]:
    """Shared dashboards of the caller's stations and the caller's own personal ones, by id."""
    mine = Dashboard.owner_id == user_id if user_id is not None else false()
    query = (
        select(Dashboard).where(or_(Dashboard.shared.is_(True), mine)).order_by(Dashboard.id).limit(limit + 1)
    )
    if visible_stations is not None:
        query = query.where(Dashboard.station_id.in_(list(visible_stations)))
    if station_id:
        query = query.where(Dashboard.station_id == station_id)
    if cursor:
        query = query.where(Dashboard.id > _row_id(decode_cursor(cursor, 1)[0]))
    rows = list((await session.scalars(query)).all())
    next_cursor = encode_cursor(str(rows[limit - 1].id)) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def create_dashboard(
    session: AsyncSession, body: DashboardCreate, *, station_id: str, owner_id: int | None
) -> Dashboard:
    now = utcnow()
    dash = Dashboard(
        station_id=station_id,
        name=body.name,
        shared=body.shared,
        owner_id=None if body.shared else owner_id,
        layout=body.layout.model_dump(),
        created_at=now,
        updated_at=now,
    )
    session.add(dash)
    await session.flush()
    if dash.shared:
        _announce(session, dash, "dashboard.created", [])
    return dash


async def update_dashboard(
    session: AsyncSession, dash: Dashboard, body: DashboardUpdate, *, owner_id: int | None
) -> list[str]:
    """Apply the fields sent; making it personal hands it to `owner_id`. Returns what changed."""
    changed: list[str] = []
    was_shared = dash.shared
    if body.name is not None and body.name != dash.name:
        dash.name = body.name
        changed.append("name")
    if body.layout is not None and body.layout.model_dump() != dash.layout:
        widgets = await list_widgets(session, dash.id)
        _check_fit(body.layout.columns, [(["body", "layout", "columns"], w.x, w.w) for w in widgets])
        dash.layout = body.layout.model_dump()
        changed.append("layout")
    if body.shared is not None and body.shared != dash.shared:
        dash.shared = body.shared
        dash.owner_id = None if body.shared else owner_id
        changed.append("shared")
    if changed:
        dash.updated_at = utcnow()
        if was_shared or dash.shared:
            _announce(session, dash, "dashboard.updated", changed)
    return changed


async def delete_dashboard(session: AsyncSession, dash: Dashboard) -> None:
    # Widgets first and explicitly: SQLite cascades only on connections with foreign keys switched on.
    await session.execute(delete(DashboardWidget).where(DashboardWidget.dashboard_id == dash.id))
    await session.delete(dash)
    if dash.shared:
        _announce(session, dash, "dashboard.deleted", [])


# --- widgets ---------------------------------------------------------------------------------------


async def list_widgets(session: AsyncSession, dashboard_id: int) -> Sequence[DashboardWidget]:
    query = (
        select(DashboardWidget)
        .where(DashboardWidget.dashboard_id == dashboard_id)
        .order_by(DashboardWidget.y, DashboardWidget.x, DashboardWidget.id)
    )
    return (await session.scalars(query)).all()


async def get_widget(session: AsyncSession, dash: Dashboard, widget_id: int) -> DashboardWidget:
    widget = await session.get(DashboardWidget, widget_id)
    if widget is None or widget.dashboard_id != dash.id:
        raise WidgetNotFound(f"No widget {widget_id} on dashboard {dash.id}.")
    return widget


async def add_widget(session: AsyncSession, dash: Dashboard, body: WidgetCreate) -> DashboardWidget:
    count = await session.scalar(
        select(func.count()).select_from(DashboardWidget).where(DashboardWidget.dashboard_id == dash.id)
    )
    if (count or 0) >= MAX_WIDGETS:
        raise LayoutInvalid(f"A dashboard holds at most {MAX_WIDGETS} widgets.")
    config = await checked_config(session, dash.station_id, body.kind, body.config)
    pos = body.position
    _check_fit(_layout(dash).columns, [(["body", "position"], pos.x, pos.w)])
    now = utcnow()
    widget = DashboardWidget(
        dashboard_id=dash.id,
        kind=body.kind,
        title=body.title,
        x=pos.x,
        y=pos.y,
        w=pos.w,
        h=pos.h,
        config=config,
        created_at=now,
        updated_at=now,
    )
    session.add(widget)
    await session.flush()
    _touch(session, dash, "widgets")
    return widget


async def update_widget(
    session: AsyncSession, dash: Dashboard, widget_id: int, body: WidgetUpdate
) -> tuple[DashboardWidget, list[str]]:
    widget = await get_widget(session, dash, widget_id)
    changed: list[str] = []
    if body.title is not None and body.title != widget.title:
        widget.title = body.title
        changed.append("title")
    if body.position is not None:
        pos = body.position
        _check_fit(_layout(dash).columns, [(["body", "position"], pos.x, pos.w)])
        if (pos.x, pos.y, pos.w, pos.h) != (widget.x, widget.y, widget.w, widget.h):
            widget.x, widget.y, widget.w, widget.h = pos.x, pos.y, pos.w, pos.h
            changed.append("position")
    if body.config is not None:
        config = await checked_config(session, dash.station_id, widget.kind, body.config)
        if config != widget.config:
            widget.config = config
            changed.append("config")
    if changed:
        widget.updated_at = utcnow()
        _touch(session, dash, "widgets")
    return widget, changed


async def delete_widget(session: AsyncSession, dash: Dashboard, widget_id: int) -> DashboardWidget:
    widget = await get_widget(session, dash, widget_id)
    await session.delete(widget)
    _touch(session, dash, "widgets")
    return widget


async def set_layout(session: AsyncSession, dash: Dashboard, body: LayoutUpdate) -> None:
    """Place every widget at once (and change the grid if asked); all of it or nothing."""
    widgets = {w.id: w for w in await list_widgets(session, dash.id)}
    sent = [p.id for p in body.widgets]
    problems: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, widget_id in enumerate(sent):
        if widget_id in seen:
            problems.append(
                {"loc": ["body", "widgets", i, "id"], "msg": f"widget {widget_id} is listed twice"}
            )
        elif widget_id not in widgets:
            problems.append(
                {"loc": ["body", "widgets", i, "id"], "msg": f"widget {widget_id} is not on this dashboard"}
            )
        seen.add(widget_id)
    for widget_id in sorted(set(widgets) - seen):
        problems.append({"loc": ["body", "widgets"], "msg": f"widget {widget_id} is missing"})
    if problems:
        raise LayoutInvalid(
            "List every widget of the dashboard exactly once: " + problems[0]["msg"] + ".",
            errors=problems,
        )
    layout = body.layout or _layout(dash)
    _check_fit(layout.columns, [(["body", "widgets", i], p.x, p.w) for i, p in enumerate(body.widgets)])
    now = utcnow()
    for p in body.widgets:
        widget = widgets[p.id]
        if (p.x, p.y, p.w, p.h) != (widget.x, widget.y, widget.w, widget.h):
            widget.x, widget.y, widget.w, widget.h = p.x, p.y, p.w, p.h
            widget.updated_at = now
    dash.layout = layout.model_dump()
    _touch(session, dash, "layout")
    await session.flush()  # sessions do not autoflush; the answer lists the widgets in their new order


def _touch(session: AsyncSession, dash: Dashboard, what: str) -> None:
    dash.updated_at = utcnow()
    if dash.shared:
        _announce(session, dash, "dashboard.updated", [what])


Placement = tuple[list[str | int], int, int]  # (where in the request, x, w)


def _check_fit(columns: int, placements: list[Placement]) -> None:
    """Every widget must end within the grid's `columns`."""
    problems = [
        {"loc": loc, "msg": f"x + w = {x + w} is more than the dashboard's {columns} columns"}
        for loc, x, w in placements
        if x + w > columns
    ]
    if problems:
        where = ".".join(str(p) for p in problems[0]["loc"][1:])
        raise LayoutInvalid(f"{where}: {problems[0]['msg']}.", errors=problems)


# --- widget configs ---------------------------------------------------------------------------------


async def checked_config(
    session: AsyncSession, station_id: str, kind: str, config: dict[str, Any]
) -> dict[str, Any]:
    """The config, validated against its kind and with defaults filled in; every channel and device it
    names must belong to `station_id`."""
    model = CONFIG_MODELS[kind]
    try:
        parsed = model.model_validate(config)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", "config", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        raise WidgetConfigInvalid(f"{kind} {where}: {first['msg']}", errors=errors) from None
    await _check_references(session, station_id, parsed)
    return parsed.model_dump(mode="json")


async def _check_references(session: AsyncSession, station_id: str, cfg: Any) -> None:
    problems: list[dict[str, Any]] = []
    if isinstance(cfg, LineChartConfig):
        for i, channel_id in enumerate(cfg.channels):
            if not await _channel_at(session, station_id, channel_id):
                problems.append(_unknown(["channels", i], f"channel {channel_id!r}"))
    elif isinstance(cfg, GaugeConfig | StatConfig):
        if not await _channel_at(session, station_id, cfg.channel):
            problems.append(_unknown(["channel"], f"channel {cfg.channel!r}"))
    elif isinstance(cfg, DeviceControlConfig):
        device = await _device_at(session, station_id, cfg.device_id)
        if device is None:
            problems.append(_unknown(["device_id"], f"device {cfg.device_id!r}"))
        elif cfg.actions is not None:
            commands = (await devices.get_type(session, device.type)).commands or {}
            for i, action in enumerate(cfg.actions):
                if action not in commands:
                    known = ", ".join(sorted(commands))
                    raise WidgetConfigInvalid(
                        f"device_control actions.{i}: a {device.type} device has no command {action!r}; "
                        f"its commands are {known}.",
                        errors=[{"loc": ["body", "config", "actions", i], "msg": "unknown command"}],
                    )
    elif (
        isinstance(cfg, EventListConfig)
        and cfg.device_id is not None
        and await _device_at(session, station_id, cfg.device_id) is None
    ):
        problems.append(_unknown(["device_id"], f"device {cfg.device_id!r}"))
    if problems:
        raise WidgetReferenceInvalid(
            f"{problems[0]['msg']}; a widget may only show channels and devices of its dashboard's station.",
            errors=problems,
        )


def _unknown(loc: list[str | int], what: str) -> dict[str, Any]:
    # The same words whether it exists at another station or nowhere: nothing to learn by probing.
    return {"loc": ["body", "config", *loc], "msg": f"no {what} at this station"}


async def _device_at(session: AsyncSession, station_id: str, device_id: str) -> Device | None:
    try:
        device = await devices.get_device(session, device_id)
    except DeviceNotFound:
        return None
    return device if device.station_id == station_id else None


async def _channel_at(session: AsyncSession, station_id: str, channel_id: str) -> bool:
    """A channel of the station, or one a device of the station will create with its first reading
    (channels appear with their first datapoint, and a dashboard is often built before that)."""
    try:
        channel = await telemetry.get_channel(session, channel_id)
    except ChannelNotFound:
        kind, _, rest = channel_id.partition(":")
        source = rest.split("/", 1)[0]
        if kind == "device":
            return await _device_at(session, station_id, source) is not None
        if kind == "controller":  # a controller of the station: its channels appear with their first reading
            return await controllers.controller_at(session, station_id, source)
        return False
    return channel.station_id == station_id
