"""Tables of the MCP slice: the pending confirmations of agents' write tools."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime


class McpConfirmation(Base):
    """One write an agent asked for. It runs only after a person approves it, and then exactly once:
    `pending` → `approved` (a guarded UPDATE) → `executed` | `failed`; or `denied`, or `expired`."""

    __tablename__ = "mcp_confirmations"
    __table_args__ = (Index("ix_mcp_confirmations_station_status", "station_id", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(32))
    token_id: Mapped[int] = mapped_column()
    token_name: Mapped[str] = mapped_column(String(120))
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSONType)  # secrets redacted
    summary: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(120), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
