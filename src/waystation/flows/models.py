"""Tables of the flows slice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class MqttServer(Base):
    """A broker flows may read from; flows with no server use the station's own broker."""

    __tablename__ = "mqtt_servers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=1883)
    tls: Mapped[bool] = mapped_column(default=False)
    username: Mapped[str | None] = mapped_column(String(255), default=None)
    password_sealed: Mapped[str | None] = mapped_column(Text, default=None)  # encrypted at rest
    client_id: Mapped[str | None] = mapped_column(String(120), default=None)
    is_default: Mapped[bool] = mapped_column(default=False)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Flow(Base):
    __tablename__ = "flows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    topic: Mapped[str] = mapped_column(String(512))
    mqtt_server_id: Mapped[int | None] = mapped_column(
        ForeignKey("mqtt_servers.id", ondelete="RESTRICT"), default=None
    )
    payload_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    action: Mapped[str] = mapped_column(String(16))  # STORE_DB | POST_ENDPOINT
    endpoint_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    # POST_ENDPOINT signing secret (`whsec_…`) sealed with the station key: the plaintext is needed to sign
    # every attempt. None for flows made before signing existed; their deliveries go out unsigned.
    endpoint_secret_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    enabled: Mapped[bool] = mapped_column(default=True)
    last_msg_id: Mapped[int] = mapped_column(BigInteger, default=0)
    accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)
    station_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DataRecord(Base):
    """One payload field of one accepted message of a STORE_DB flow (any JSON type)."""

    __tablename__ = "data_records"
    __table_args__ = (Index("ix_data_records_flow_msg", "flow_id", "msg_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_id: Mapped[int] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"))
    msg_id: Mapped[int] = mapped_column(BigInteger)
    field: Mapped[str] = mapped_column(String(128))
    value: Mapped[Any] = mapped_column(JSONType)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
