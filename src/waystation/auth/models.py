"""Tables of the auth slice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from waystation.db import Base, JSONType, UTCDateTime, utcnow


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The account's id in the cloud service, for users the cloud link manages (docs/cloud.md).
    cloud_user_id: Mapped[str | None] = mapped_column(String(64), unique=True, index=True, default=None)


class RefreshToken(Base):
    """A refresh token, stored as the SHA-256 of its value; rotated on every use."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ApiToken(Base):
    """A long-lived token for scripts and agents: `wst_…`, shown once, stored as its SHA-256."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(120))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, so people can tell tokens apart
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    station_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class SigningKey(Base):
    """A key that signs access tokens (`kid` in the JWT header). Rotated on a schedule and on demand;
    a retired key still verifies until the last token it signed has expired."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_sealed: Mapped[str] = mapped_column(Text)  # encrypted with the station key (SecretBox)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    verify_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class RevokedToken(Base):
    """Access tokens ended before their expiry (logout, password change): kept only until they expire."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SeenSignature(Base):
    """Signatures of HMAC-signed internal calls already accepted (PROTOCOLS §11), shared by every worker:
    inserting one is what accepts a request, so a replay finds its row and is refused."""

    __tablename__ = "internal_signatures"

    signature: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex HMAC-SHA256
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
