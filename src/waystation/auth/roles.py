"""Roles, ordered by what they may do: owner > admin > member > viewer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["owner", "admin", "member", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}
ROLES: tuple[Role, ...] = ("owner", "admin", "member", "viewer")


def role_at_least(role: str, needed: str) -> bool:
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


SCOPE_ROLES = {"api:read": "viewer", "api:write": "member"}
SCOPES = ("api:read", "api:write", "mcp:read", "mcp:write")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, an API token, or a device (with its own token)."""

    kind: Literal["user", "token", "device"]
    id: int | str
    name: str
    role: str
    scopes: tuple[str, ...] = ()
    station_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"


def role_for_scopes(scopes: list[str] | tuple[str, ...]) -> str | None:
    """The role an API token acts with: the highest its scopes grant, or None for no REST access."""
    best: str | None = None
    for scope in scopes:
        role = SCOPE_ROLES.get(scope)
        if role is not None and (best is None or ROLE_RANK[role] > ROLE_RANK[best]):
            best = role
    return best
