"""Roles, ordered by what they may do: owner > admin > member > viewer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Role = Literal["owner", "admin", "member", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}
ROLES: tuple[Role, ...] = ("owner", "admin", "member", "viewer")


def role_at_least(role: str, needed: str) -> bool:
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


SCOPE_ROLES = {"api:read": "viewer", "api:write": "member"}
SCOPES = ("api:read", "api:write", "mcp:read", "mcp:write")


GLOBAL_ROLES = ("owner", "admin")  # a user with one of these sees every station


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, an API token, a device (with its own token) or the station agent.

    `role` is the caller's highest role anywhere (what `require()` checks first). `station_roles` says
    where it holds which role: None means every station at `role` (global owners and admins, the agent);
    otherwise only the stations listed, each with its own role.
    """

    kind: Literal["user", "token", "device", "agent", "controller"]
    id: int | str
    name: str
    role: str
    scopes: tuple[str, ...] = ()
    station_id: str | None = None
    station_roles: Mapping[str, str] | None = None
    global_role: str | None = None  # a user's installation-wide role (users, MQTT servers, keys)
    jti: str | None = None
    token_expires: float | None = None
    session_id: str | None = None  # a user's login (refresh-token family), ended by logout

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def role_at(self, station_id: str) -> str | None:
        """The caller's role at this station, or None if the station is invisible to it."""
        if self.station_roles is None:
            return self.role
        return self.station_roles.get(station_id)

    @property
    def visible_stations(self) -> frozenset[str] | None:
        """The stations this caller may see, or None for all of them."""
        return None if self.station_roles is None else frozenset(self.station_roles)


def role_for_scopes(scopes: list[str] | tuple[str, ...]) -> str | None:
    """The role an API token acts with: the highest its scopes grant, or None for no REST access."""
    best: str | None = None
    for scope in scopes:
        role = SCOPE_ROLES.get(scope)
        if role is not None and (best is None or ROLE_RANK[role] > ROLE_RANK[best]):
            best = role
    return best
