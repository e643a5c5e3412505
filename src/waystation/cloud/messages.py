"""Plain cloud messages (PROTOCOLS §7, fields in docs/cloud.md): the people who may use the station, its
name and their passwords, as the cloud manages them. `station_reset` is the link's business (link.py).

Users the cloud manages carry `cloud_user_id`; they are created with an unusable password until
`station_password_changed` sends a hash. The cloud speaks for one station: its roles go to the users'
membership of that station, while their installation role stays member or viewer (an installation admin
or owner would see every station). Owner is granted only through `identity_sync.ownerCloudUserId`.
The installation's last owner is never demoted or removed by the cloud: such a change is logged and
skipped, the rest of the message still applies. A removed user's API tokens are revoked with it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth import service as auth_service
from waystation.auth import tokens_service
from waystation.auth.models import User
from waystation.auth.security import is_password_hash
from waystation.errors import LastOwner, MemberNotFound
from waystation.station import service as station_service

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PLAIN_TYPES = (
    "identity_sync",
    "station_renamed",
    "member_added",
    "member_updated",
    "member_removed",
    "station_password_changed",
    "station_reset",
)
#: Roles a member message may give at the station; "owner" only for `identity_sync.ownerCloudUserId`.
MEMBER_ROLES = ("admin", "member", "viewer")


def installation_role(station_role: str) -> str:
    """A cloud user's `User.role`: never an installation-wide admin or owner, whatever the cloud says."""
    return "viewer" if station_role == "viewer" else "member"


class MessageInvalid(Exception):
    """The message does not have the documented shape; nothing of it was applied."""


@dataclass(frozen=True, slots=True)
class Member:
    cloud_user_id: str
    username: str
    role: str

    @classmethod
    def parse(cls, value: Any, owner_id: str | None = None) -> Member:
        """`owner_id`: the one member who may carry role "owner" (identity_sync's ownerCloudUserId)."""
        if not isinstance(value, dict):
            raise MessageInvalid("a member must be an object {cloudUserId, username, role}")
        cloud_id, username, role = value.get("cloudUserId"), value.get("username"), value.get("role")
        if not isinstance(cloud_id, str) or not 0 < len(cloud_id) <= 64:
            raise MessageInvalid("member.cloudUserId must be a string of 1 to 64 characters")
        if not isinstance(username, str) or not username.strip():
            raise MessageInvalid("member.username must be a non-empty string")
        if role not in MEMBER_ROLES and not (role == "owner" and cloud_id == owner_id):
            raise MessageInvalid(
                f"member.role must be one of {', '.join(MEMBER_ROLES)} (owner only via ownerCloudUserId)"
            )
        return cls(cloud_id, username.strip(), str(role))


def _text(message: dict[str, Any], key: str, limit: int = 120) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise MessageInvalid(f"{key} must be a non-empty string of at most {limit} characters")
    return value.strip()


def unusable_password() -> str:
    # Not a hash any hasher recognises: verification fails until the cloud sends a real one.
    return f"!cloud:{secrets.token_urlsafe(16)}"


async def apply(session: AsyncSession, message: dict[str, Any], station_id: str) -> str:
    """Apply one plain message (not `station_reset`) inside `session`; return an audit summary."""
    kind = message.get("type")
    if kind == "identity_sync":
        return await identity_sync(session, message, station_id)
    if kind == "station_renamed":
        return await rename_station(session, station_id, _text(message, "name"))
    if kind in ("member_added", "member_updated"):
        return await upsert_member(session, station_id, Member.parse(message.get("member")))
    if kind == "member_removed":
        return await remove_member(session, station_id, _text(message, "cloudUserId", 64))
    if kind == "station_password_changed":
        return await change_password(session, message)
    raise MessageInvalid(f"unknown message type {kind!r}")


async def identity_sync(session: AsyncSession, message: dict[str, Any], station_id: str) -> str:
    raw_members = message.get("members")
    if not isinstance(raw_members, list):
        raise MessageInvalid("members must be a list")
    owner_id = message.get("ownerCloudUserId")
    if owner_id is not None and not isinstance(owner_id, str):
        raise MessageInvalid("ownerCloudUserId must be a string")
    members = [Member.parse(m, owner_id) for m in raw_members]
    notes: list[str] = []
    if "stationName" in message:
        notes.append(await rename_station(session, station_id, _text(message, "stationName")))
    # The owner first, so demoting a previous owner later in the list finds another owner in place.
    members.sort(key=lambda m: m.cloud_user_id != owner_id)
    for member in members:
        if member.cloud_user_id == owner_id:
            member = Member(member.cloud_user_id, member.username, "owner")
        notes.append(await upsert_member(session, station_id, member))
    listed = {m.cloud_user_id for m in members}
    stale = (await session.scalars(select(User.cloud_user_id).where(User.cloud_user_id.is_not(None)))).all()
    for cloud_id in sorted(c for c in stale if c is not None and c not in listed):
        notes.append(await remove_member(session, station_id, cloud_id))
    return f"synced {len(members)} members; " + "; ".join(notes)


async def rename_station(session: AsyncSession, station_id: str, name: str) -> str:
    station = await station_service.get_station(session, station_id)
    station.name = name
    return f"station renamed to {name!r}"


async def _user_by_cloud_id(session: AsyncSession, cloud_id: str) -> User | None:
    return await session.scalar(select(User).where(User.cloud_user_id == cloud_id))


async def _free_username(session: AsyncSession, wanted: str, cloud_id: str, user_id: int | None) -> str:
    """The cloud's username if valid and free, else a valid variant made unique by the cloud id."""
    base = re.sub(r"[^A-Za-z0-9_.@-]", "_", wanted)[:64] or "cloud-user"
    holder = await session.scalar(select(User.id).where(User.username == base))
    if holder is None or holder == user_id:
        return base
    suffix = hashlib.sha256(cloud_id.encode()).hexdigest()[:8]
    return f"{base[:55]}-{suffix}"


async def upsert_member(session: AsyncSession, station_id: str, member: Member) -> str:
    """The member's role goes to their membership of `station_id`; `User.role` is capped."""
    global_role = installation_role(member.role)
    user = await _user_by_cloud_id(session, member.cloud_user_id)
    if user is None:
        username = await _free_username(session, member.username, member.cloud_user_id, None)
        user = User(
            username=username,
            password_hash=unusable_password(),
            role=global_role,
            cloud_user_id=member.cloud_user_id,
        )
        session.add(user)
        await session.flush()
        await station_service.set_member(session, station_id, user.id, member.role)
        return f"added {username} as {member.role}"
    changes: list[str] = []
    if member.username != user.username:
        username = await _free_username(session, member.username, member.cloud_user_id, user.id)
        if username != user.username:
            user.username = username
            changes.append(f"username={username}")
    if global_role != user.role:
        try:
            if user.role == "owner":  # from before cloud users were capped
                await auth_service.keep_an_owner(session, user.id)
            user.role = global_role
            changes.append(f"installation role={global_role}")
        except LastOwner:
            log.warning("cloud asked to demote %s, the last owner; skipped", user.username)
            return f"kept {user.username} as owner (last owner)"
    try:
        member_row = await station_service.get_member(session, station_id, user.id)
        previous: str | None = member_row.role
    except MemberNotFound:
        previous = None
    try:
        await station_service.set_member(session, station_id, user.id, member.role)
        if previous != member.role:
            changes.append(f"station role={member.role}")
    except LastOwner:
        log.warning("cloud asked to demote %s, the station's last owner; skipped", user.username)
        changes.append("kept station owner (last owner)")
    return f"updated {user.username}: {', '.join(changes) or 'no change'}"


async def remove_member(session: AsyncSession, station_id: str, cloud_id: str) -> str:
    user = await _user_by_cloud_id(session, cloud_id)
    if user is None:
        return f"no user with cloud id {cloud_id}"
    if not await _remove_user(session, station_id, user):
        return f"kept {user.username} (last owner)"
    return f"removed {user.username}"


async def _remove_user(session: AsyncSession, station_id: str, user: User) -> bool:
    """Delete a cloud user with their sessions and API tokens; False (nothing changed) if they are the
    installation's or the station's last owner."""
    try:
        if user.role == "owner":
            await auth_service.keep_an_owner(session, user.id)
        try:
            member = await station_service.get_member(session, station_id, user.id)
            if member.role == "owner":
                await station_service.remove_member(session, station_id, user.id)
        except MemberNotFound:
            pass
    except LastOwner:
        log.warning("cloud user %s is the last owner; kept", user.username)
        return False
    # In the same transaction as the delete: created_by becomes NULL with it, and a token without a
    # creator would otherwise act with its scopes' role, capped by nobody.
    await tokens_service.revoke_tokens_of(session, user.id)
    # Sessions (refresh tokens) and memberships go with the row (ON DELETE CASCADE); access tokens are
    # refused once the account is gone.
    await session.delete(user)
    await session.flush()
    return True


async def forget_cloud_users(session: AsyncSession, station_id: str) -> str:
    """Unclaim and `station_reset`: no cloud manages these accounts any more, so they go. One who is the
    last owner stays, as a plain local account (cloud id cleared), so the station is never ownerless."""
    users = (await session.scalars(select(User).where(User.cloud_user_id.is_not(None)))).all()
    removed, kept = 0, []
    for user in users:
        if await _remove_user(session, station_id, user):
            removed += 1
        else:
            user.cloud_user_id = None
            kept.append(user.username)
    await session.flush()
    note = f"; kept {', '.join(kept)} as local owner" if kept else ""
    return f"removed {removed} cloud users{note}"


async def change_password(session: AsyncSession, message: dict[str, Any]) -> str:
    cloud_id = _text(message, "cloudUserId", 64)
    password_hash = message.get("passwordHash")
    # Only a hash this station can verify: a plaintext password (or anything else) is refused.
    if not isinstance(password_hash, str) or len(password_hash) > 512 or not is_password_hash(password_hash):
        raise MessageInvalid("passwordHash must be an argon2 hash (plaintext passwords are refused)")
    user = await _user_by_cloud_id(session, cloud_id)
    if user is None:
        raise MessageInvalid(f"no user with cloud id {cloud_id}")
    await auth_service.set_password_hash(session, user, password_hash)
    return f"password of {user.username} changed"
