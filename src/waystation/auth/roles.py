"""Roles, ordered by what they may do: owner > admin > member > viewer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["owner", "admin", "member", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}
ROLES: tuple[Role, ...] = ("owner", "admin", "member", "viewer")


def role_at_least(role: str, needed: str) -> bool:
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (later also API tokens, devices and MCP agents)."""

    kind: Literal["user"]
    id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"
