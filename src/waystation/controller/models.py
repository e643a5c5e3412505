"""Tables of the controller slice: plugin controllers, their plugin instances and channel mappings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class Controller(Base):
    """A plugin controller process (`waystation controller`): acts at one station with its own `wsc_…`
    token (stored as its SHA-256) and writes the `controller:{id}/…` channels."""

    __tablename__ = "controllers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart
    created_by: Mapped[str | None] = mapped_column(String(120), default=None)  # the actor that created it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class PluginInstance(Base):
    """One configured plugin on a controller: which plugin (entry-point name), its config, how often
    it is read."""

    __tablename__ = "plugin_instances"
    # The unique constraints lead with the columns lookups filter on, so they double as the indexes.
    __table_args__ = (UniqueConstraint("controller_id", "name", name="uq_plugin_instances_controller_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    controller_id: Mapped[str] = mapped_column(ForeignKey("controllers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    plugin: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    interval_seconds: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ChannelMapping(Base):
    """Which plugin channel of which instance becomes which station channel
    (`controller:{controller_id}/{key}`), with its unit, direction and range."""

    __tablename__ = "channel_mappings"
    __table_args__ = (
        UniqueConstraint("controller_id", "key", name="uq_channel_mappings_controller_key"),
        UniqueConstraint("instance_id", "plugin_channel", name="uq_channel_mappings_instance_channel"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    controller_id: Mapped[str] = mapped_column(ForeignKey("controllers.id", ondelete="CASCADE"))
    instance_id: Mapped[int] = mapped_column(ForeignKey("plugin_instances.id", ondelete="CASCADE"))
    plugin_channel: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str | None] = mapped_column(String(16), default=None)
    direction: Mapped[str] = mapped_column(String(8), default="input")  # input | output
    min_value: Mapped[float | None] = mapped_column(Float, default=None)
    max_value: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
