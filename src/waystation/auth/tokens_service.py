"""API tokens (`wst_…`): created with scopes, shown once, stored as SHA-256, revocable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import ApiToken
from waystation.auth.roles import SCOPES
from waystation.auth.security import new_secret, sha256_hex
from waystation.errors import NotFound, TokenInvalid, Unprocessable

API_TOKEN_PREFIX = "wst_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per token


class ApiTokenNotFound(NotFound):
    code = "API_TOKEN_NOT_FOUND"
    title = "API token not found"


async def create_token(
    session: AsyncSession,
    *,
    name: str,
    scopes: list[str],
    station_id: str | None,
    user_id: int | None,
) -> tuple[ApiToken, str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise Unprocessable(f"scopes must be a non-empty list of {', '.join(SCOPES)}; unknown: {unknown}")
    plaintext = new_secret(API_TOKEN_PREFIX)
    token = ApiToken(
        name=name,
        token_hash=sha256_hex(plaintext),
        prefix=plaintext[:10],
        scopes=sorted(set(scopes)),
        station_id=station_id,
        created_by=user_id,
    )
    session.add(token)
    await session.flush()
    return token, plaintext


async def list_tokens(session: AsyncSession) -> Sequence[ApiToken]:
    return (await session.scalars(select(ApiToken).order_by(ApiToken.id))).all()


async def revoke_token(session: AsyncSession, token_id: int) -> ApiToken:
    token = await session.get(ApiToken, token_id)
    if token is None:
        raise ApiTokenNotFound(f"No API token {token_id}.")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
    return token


async def revoke_tokens_of(session: AsyncSession, user_id: int) -> int:
    """Revoke every live token `user_id` created (the user is about to be deleted: without a creator a
    token would no longer be capped by anyone's role). Returns how many were revoked."""
    result = await session.execute(
        update(ApiToken)
        .where(ApiToken.created_by == user_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def authenticate_token(session: AsyncSession, plaintext: str) -> ApiToken:
    token = await session.scalar(select(ApiToken).where(ApiToken.token_hash == sha256_hex(plaintext)))
    if token is None or token.revoked_at is not None:
        raise TokenInvalid("The API token is unknown or revoked.")
    now = datetime.now(UTC)
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = now
    return token
