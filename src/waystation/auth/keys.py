"""The signing-key ring: keys live in `signing_keys` (sealed with the station key), rotate on a schedule
(`WAYSTATION_SIGNING_KEY_ROTATION_DAYS`) and on demand; a retired key verifies until its last token expires.

Every worker reloads the ring once a minute, so a rotation made by one is honoured by all; and a token
naming a key this worker does not know yet makes it read the ring at once (at most once a second), so a
token signed by a key another worker made a moment ago is accepted everywhere straight away.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import RevokedToken, SigningKey
from waystation.auth.tokens import AccessClaims, TokenSigner, UnknownSigningKey, VerifyKey
from waystation.config import Settings
from waystation.db import Database
from waystation.secrets_box import SecretBox

log = logging.getLogger(__name__)

RELOAD_SECONDS = 60.0
# Clock skew allowance: a retired key verifies this long after its last token's expiry.
LEEWAY = timedelta(seconds=60)
# An unknown `kid` reloads the ring at most this often per worker, so a flood of made-up kids costs the
# database one query a second, not one per request.
UNKNOWN_KID_RELOAD_SECONDS = 1.0
MAX_KID_LENGTH = 32  # signing_keys.kid: a longer one cannot be in the table


def new_kid() -> str:
    return f"k{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


class KeyRing:
    def __init__(self, settings: Settings, db: Database, box: SecretBox, signer: TokenSigner) -> None:
        self.settings = settings
        self.db = db
        self.box = box
        self.signer = signer
        self._unknown_kid_lock = asyncio.Lock()
        self._unknown_kid_reload_at: float | None = None  # monotonic time of the last such reload

    @property
    def rotation_period(self) -> timedelta:
        return timedelta(days=self.settings.signing_key_rotation_days)

    async def load(self) -> None:
        """Read the ring from the database, rotating first if there is no key or the current one is due."""
        async with self.db.session() as session:
            await self._purge(session)
            keys = await self._keys(session)
            current = _current(keys)
            if current is None or datetime.now(UTC) - current.created_at >= self.rotation_period:
                await self._rotate(session, keys)
                keys = await self._keys(session)
            self._install(keys)

    async def reload(self) -> None:
        """Read the ring as the database has it now (no purge, no rotation)."""
        async with self.db.session() as session:
            keys = await self._keys(session)
        self._install(keys)

    async def verify(self, token: str) -> AccessClaims:
        """Verify an access token. If it names a key this worker does not hold, another worker may have
        just rotated: read the ring again (rate-limited) before refusing it."""
        try:
            return self.signer.verify(token)
        except UnknownSigningKey as exc:
            if not await self._reload_for(exc.kid):
                raise
        return self.signer.verify(token)

    async def _reload_for(self, kid: str) -> bool:
        """True once the ring holds `kid`. Concurrent callers share one reload; after it, further unknown
        kids are refused without asking the database until UNKNOWN_KID_RELOAD_SECONDS have passed."""
        if len(kid) > MAX_KID_LENGTH:
            return False
        async with self._unknown_kid_lock:
            if self.signer.knows(kid):  # a reload that ran while this call waited brought it
                return True
            now = time.monotonic()
            last = self._unknown_kid_reload_at
            if last is not None and now - last < UNKNOWN_KID_RELOAD_SECONDS:
                return False
            self._unknown_kid_reload_at = now
            await self.reload()
            return self.signer.knows(kid)

    async def rotate(self) -> str:
        """Start signing with a new key now; returns its kid."""
        async with self.db.session() as session:
            kid = await self._rotate(session, await self._keys(session))
            keys = await self._keys(session)
        self._install(keys)
        return kid

    async def list_keys(self) -> Sequence[SigningKey]:
        async with self.db.session() as session:
            return await self._keys(session)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            await self.load()

    # --- internals ---------------------------------------------------------------------------------

    async def _keys(self, session: AsyncSession) -> Sequence[SigningKey]:
        return (await session.scalars(select(SigningKey).order_by(SigningKey.created_at))).all()

    async def _rotate(self, session: AsyncSession, keys: Sequence[SigningKey]) -> str:
        now = datetime.now(UTC)
        verify_until = now + self.signer.lifetime + LEEWAY
        for key in keys:
            if key.retired_at is None:
                key.retired_at = now
                key.verify_until = verify_until
        kid = new_kid()
        session.add(SigningKey(kid=kid, secret_sealed=self.box.seal(secrets.token_hex(32)), created_at=now))
        await session.flush()
        log.info("signing key rotated: now signing with %s", kid)
        return kid

    async def _purge(self, session: AsyncSession) -> None:
        now = datetime.now(UTC)
        await session.execute(delete(SigningKey).where(SigningKey.verify_until < now))
        await session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))

    def _install(self, keys: Sequence[SigningKey]) -> None:
        current = _current(keys)
        if current is None:
            raise RuntimeError("signing key ring has no current key")
        ring = {
            k.kid: VerifyKey(bytes.fromhex(self.box.open(k.secret_sealed)), k.verify_until)
            for k in keys
            if k.verify_until is None or k.verify_until > datetime.now(UTC)
        }
        self.signer.install(current.kid, ring)


def _current(keys: Sequence[SigningKey]) -> SigningKey | None:
    # Two workers rotating at the same moment leave two unretired keys: the newest signs, both verify.
    live = [k for k in keys if k.retired_at is None]
    return max(live, key=lambda k: k.created_at) if live else None
