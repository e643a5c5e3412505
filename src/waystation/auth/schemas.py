"""Request and response bodies of the auth routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from waystation.auth.roles import Role

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=10, max_length=256)


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(default=None, max_length=256)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=10, max_length=256)
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=256)


class SetupStatus(BaseModel):
    needed: bool


class UserOut(BaseModel):
    id: int
    username: str
    role: Role
    disabled: bool
    created_at: datetime


class StationRoleOut(BaseModel):
    """A station the caller can see, with the role they act with there (what the routes check)."""

    id: str
    name: str
    is_default: bool
    role: Role


class MeOut(UserOut):
    """`role` is the installation-wide role; `stations` the role at each visible station."""

    stations: list[StationRoleOut] = Field(default_factory=list)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=256)
    role: Role = "viewer"


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=256)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=8, max_length=256)


class SigningKeyOut(BaseModel):
    kid: str
    created_at: datetime
    retired_at: datetime | None
    verify_until: datetime | None
    current: bool


class SigningKeyRotated(BaseModel):
    kid: str
