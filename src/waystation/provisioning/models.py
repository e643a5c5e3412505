"""Tables of the provisioning slice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, UTCDateTime, utcnow


class BindToken(Base):
    """A one-time `wsb_…` token that lets a client fetch its device credentials (stored as SHA-256)."""

    __tablename__ = "bind_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class AgentWifi(Base):
    """The Wi-Fi network BLE-provisioned devices join, set by the station agent. One row (id 1); the
    password is sealed with the station key, because it must be written to devices in clear later."""

    __tablename__ = "agent_wifi"

    id: Mapped[int] = mapped_column(primary_key=True)
    ssid: Mapped[str] = mapped_column(String(64))
    password_sealed: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
