"""Users, login, refresh-token rotation and first-run setup."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import RefreshToken, User
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
    PasswordTooWeak,
    SetupAlreadyDone,
    SetupTokenInvalid,
    TokenInvalid,
    Unprocessable,
    UserExists,
    UserNotFound,
)
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
    return user


async def set_password(session: AsyncSession, user: User, password: str) -> None:
    check_password_strength(password, user.username)
    user.password_hash = await asyncio.to_thread(hash_password, password)
    user.password_changed_at = datetime.now(UTC)
    # A new password ends every session of that user.
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


async def authenticate(session: AsyncSession, username: str, password: str) -> User:
    user = await session.scalar(select(User).where(User.username == username))
    ok = await asyncio.to_thread(verify_password, password, user.password_hash if user else None)
    if user is None or not ok or user.disabled:
        raise InvalidCredentials()
    return user


async def issue_pair(
    session: AsyncSession, signer: TokenSigner, user: User, refresh_days: int, family_id: str | None = None
) -> TokenPair:
    access, expires_in = signer.issue(user.id, user.username, user.role)
    refresh = new_secret(REFRESH_PREFIX)
    session.add(
        RefreshToken(
            user_id=user.id,
            token_hash=sha256_hex(refresh),
            family_id=family_id or uuid.uuid4().hex,
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
    user = await session.get(User, row.user_id)
    if user is None or user.disabled:
        raise TokenInvalid("The user of this token no longer exists or is disabled.")
    row.used_at = now
    return await issue_pair(session, signer, user, refresh_days, family_id=row.family_id)


async def revoke_family(session: AsyncSession, family_id: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


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
