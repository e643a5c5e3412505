"""Users, login, refresh-token rotation and first-run setup."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import RefreshToken, RevokedToken, User
from waystation.auth.roles import ROLE_RANK
from waystation.auth.schemas import TokenPair
from waystation.auth.security import (
    MIN_PASSWORD_LENGTH,
    constant_time_equals,
    hash_password,
    new_secret,
    sha256_hex,
    verify_password,
)
from waystation.auth.tokens import TokenSigner
from waystation.errors import (
    InvalidCredentials,
    LastOwner,
    PasswordTooWeak,
    SetupAlreadyDone,
    SetupTokenInvalid,
    TokenInvalid,
    Unprocessable,
    UserExists,
    UserNotFound,
)
from waystation.station import service as station_service
from waystation.station.models import Setting

SETUP_TOKEN_KEY = "setup_token_hash"


class RefreshTokenReused(TokenInvalid):
    """An already-rotated refresh token came back: treat it as stolen and end its whole family."""

    def __init__(self, family_id: str) -> None:
        super().__init__("The refresh token was already used; all sessions of this login were ended.")
        self.family_id = family_id


REFRESH_PREFIX = "wsr_"


def check_password_strength(password: str, username: str = "") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordTooWeak(f"Use at least {MIN_PASSWORD_LENGTH} characters.")
    if username and password.lower() == username.lower():
        raise PasswordTooWeak("The password must differ from the username.")


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def get_user(session: AsyncSession, username: str) -> User:
    user = await session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserNotFound(f"No user named {username!r}.")
    return user


async def list_users(session: AsyncSession) -> Sequence[User]:
    return (await session.scalars(select(User).order_by(User.id))).all()


async def create_user(session: AsyncSession, username: str, password: str, role: str) -> User:
    if role not in ROLE_RANK:
        raise Unprocessable(f"Unknown role {role!r}; use one of owner, admin, member, viewer.")
    check_password_strength(password, username)
    if await session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UserExists(f"A user named {username!r} already exists.")
    user = User(username=username, password_hash=await asyncio.to_thread(hash_password, password), role=role)
    session.add(user)
    await session.flush()
    await give_default_station(session, user)
    return user


async def give_default_station(session: AsyncSession, user: User) -> None:
    """See `station.service.join_default_station`."""
    await station_service.join_default_station(session, user.id, user.role)


async def set_password(session: AsyncSession, user: User, password: str) -> None:
    check_password_strength(password, user.username)
    await set_password_hash(session, user, await asyncio.to_thread(hash_password, password))


async def set_password_hash(session: AsyncSession, user: User, password_hash: str) -> None:
    """Store an already hashed password (the cloud link sends hashes, never passwords); like a password
    change, it bumps the password version and ends the user's sessions."""
    user.password_hash = password_hash
    user.password_changed_at = datetime.now(UTC)
    # A new password ends every session of that user.
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


async def keep_an_owner(session: AsyncSession, leaving_user_id: int) -> None:
    """Refuse to demote, disable or delete the installation's last enabled owner."""
    others = await session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == "owner", User.disabled.is_(False), User.id != leaving_user_id)
    )
    if not others:
        raise LastOwner("This is the last owner; make someone else owner first.")


async def authenticate(session: AsyncSession, username: str, password: str) -> User:
    user = await session.scalar(select(User).where(User.username == username))
    ok = await asyncio.to_thread(verify_password, password, user.password_hash if user else None)
    if user is None or not ok or user.disabled:
        raise InvalidCredentials()
    return user


def password_version(changed_at: datetime) -> int:
    """Access tokens carry this (`pwv`): a password change makes every older token invalid, to the
    millisecond (the `iat` claim only has whole seconds)."""
    return int(changed_at.timestamp() * 1000)


async def issue_pair(
    session: AsyncSession, signer: TokenSigner, user: User, refresh_days: int, family_id: str | None = None
) -> TokenPair:
    family_id = family_id or uuid.uuid4().hex
    access, expires_in = signer.issue(
        user.id, user.username, user.role, sid=family_id, pwv=password_version(user.password_changed_at)
    )
    refresh = new_secret(REFRESH_PREFIX)
    session.add(
        RefreshToken(
            user_id=user.id,
            token_hash=sha256_hex(refresh),
            family_id=family_id,
            expires_at=datetime.now(UTC) + timedelta(days=refresh_days),
        )
    )
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=expires_in)


async def refresh(session: AsyncSession, signer: TokenSigner, token: str, refresh_days: int) -> TokenPair:
    """Rotate a refresh token. Reusing an already-used one revokes its whole family (theft signal)."""
    now = datetime.now(UTC)
    row = await session.scalar(select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(token)))
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise TokenInvalid("The refresh token is invalid, expired or revoked.")
    if row.used_at is not None:
        # The caller revokes the family in its own transaction (this one rolls back with the error).
        raise RefreshTokenReused(row.family_id)
    family_revoked = await session.scalar(
        select(RefreshToken.id).where(
            RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_not(None)
        )
    )
    if family_revoked is not None:
        # A token minted by a refresh that raced a reuse detection: its family is already dead.
        raise TokenInvalid("The refresh token is invalid, expired or revoked.")
    user = await session.get(User, row.user_id)
    if user is None or user.disabled:
        raise TokenInvalid("The user of this token no longer exists or is disabled.")
    # Spend it with a guarded UPDATE: of several parallel refreshes with one token exactly one wins, and
    # the others count as reuse (which revokes the family, the winner's new token included).
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None), RefreshToken.revoked_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise RefreshTokenReused(row.family_id)
    return await issue_pair(session, signer, user, refresh_days, family_id=row.family_id)


async def revoke_family(session: AsyncSession, family_id: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


async def revoke_access_token(session: AsyncSession, jti: str, expires_at: datetime) -> None:
    """Deny this access token until it expires (after that, its signature check refuses it anyway)."""
    if await session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, expires_at=expires_at))


async def logout(session: AsyncSession, user_id: int, refresh_token: str | None) -> None:
    if refresh_token:
        row = await session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(refresh_token))
        )
        if row is not None and row.user_id == user_id:
            await revoke_family(session, row.family_id)


# --- first-run setup ----------------------------------------------------------------------------


async def ensure_setup_token(session: AsyncSession) -> str | None:
    """With no users yet, create a one-time setup token and return it (only its hash is stored)."""
    if await count_users(session) > 0:
        return None
    token = new_secret("wss_", 24)
    existing = await session.get(Setting, SETUP_TOKEN_KEY)
    if existing is None:
        session.add(Setting(key=SETUP_TOKEN_KEY, value=sha256_hex(token)))
    else:
        existing.value = sha256_hex(token)
    return token


async def setup_needed(session: AsyncSession) -> bool:
    return await count_users(session) == 0


async def complete_setup(session: AsyncSession, token: str, username: str, password: str) -> User:
    if await count_users(session) > 0:
        raise SetupAlreadyDone()
    stored = await session.get(Setting, SETUP_TOKEN_KEY)
    if stored is None or not constant_time_equals(str(stored.value), sha256_hex(token)):
        raise SetupTokenInvalid()
    user = await create_user(session, username, password, "owner")
    await session.delete(stored)
    return user
