"""Tables of the cloud slice: the link's single configuration row."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow

CONFIG_ROW_ID = 1


class CloudConfig(Base):
    """One row (id 1): where the cloud is, who the station is to it, and what it wants to hear.

    The claim secret and the station token are sealed with the station key: the owner reads the claim
    secret back to enter it in the cloud app, and the link needs the token in clear to authenticate."""

    __tablename__ = "cloud_config"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    url: Mapped[str | None] = mapped_column(String(500), default=None)  # overrides WAYSTATION_CLOUD_URL
    chip_id: Mapped[str] = mapped_column(String(64))
    claim_secret_sealed: Mapped[str] = mapped_column(Text)
    station_token_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    active_channels: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
