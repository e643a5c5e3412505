"""Tables of the dashboards slice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class Dashboard(Base):
    """A page of widgets at one station: personal (`owner_id` set, only that user sees it) or shared
    (`owner_id` None, every member of the station sees it)."""

    __tablename__ = "dashboards"
    # Listing asks "shared ones of my stations, or mine": one index per half of that question.
    __table_args__ = (
        Index("ix_dashboards_station_shared", "station_id", "shared"),
        Index("ix_dashboards_owner_id", "owner_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    shared: Mapped[bool] = mapped_column(default=False)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), default=None)
    layout: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # grid settings (columns, …)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DashboardWidget(Base):
    __tablename__ = "dashboard_widgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dashboard_id: Mapped[int] = mapped_column(ForeignKey("dashboards.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # line_chart | gauge | stat | device_control | event_list
    title: Mapped[str] = mapped_column(String(120), default="")
    x: Mapped[int] = mapped_column(Integer, default=0)
    y: Mapped[int] = mapped_column(Integer, default=0)
    w: Mapped[int] = mapped_column(Integer, default=4)
    h: Mapped[int] = mapped_column(Integer, default=3)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # validated per kind
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
