"""HMAC-signed internal calls (PROTOCOLS §11): loopback tools and broker callbacks.

The caller sends `X-Request-Signature`, the hex HMAC-SHA256 with the station's internal secret of exactly
the string PROTOCOLS §11 fixes,

    "{METHOD}\n{path}\n{query}\n{body}"

and `X-Request-Timestamp` (Unix seconds), which must be within five minutes of the station's clock.

§11 does not put the timestamp into the signed string, so the freshness check alone cannot stop a replay
(a captured request can be sent again with a new timestamp). What stops it is the replay store: every
accepted signature is kept in `internal_signatures` for `REPLAY_MEMORY`, and whichever worker receives
the same signed request again finds it there and refuses it. The consequence for callers: two identical
requests (same method, path, query and body) are one request; a caller that repeats one makes it differ,
for example with a `nonce` query parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Request
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.models import SeenSignature
from waystation.db import Database
from waystation.errors import SignatureInvalid

MAX_SKEW_SECONDS = 300
# How long an accepted signature is refused again. It must outlast the five-minute window by far: the
# timestamp is not signed (§11), so only this memory stops a replay with a fresh timestamp.
REPLAY_MEMORY = timedelta(days=7)
PURGE_EVERY_SECONDS = 60.0  # expired rows are deleted by at most one statement a minute per worker


def load_or_create_internal_secret(data_dir: Path, configured: str | None = None) -> bytes:
    """`WAYSTATION_INTERNAL_SECRET` if set, else a random secret kept in `keys/internal.key`."""
    if configured:
        return configured.encode()
    path = data_dir / "keys" / "internal.key"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value


def canonical_message(method: str, path: str, query: str, body: bytes) -> bytes:
    """PROTOCOLS §11: `"{METHOD}\\n{path}\\n{query}\\n{body}"`, nothing more."""
    return b"\n".join([method.upper().encode(), path.encode(), query.encode(), body])


def sign(secret: bytes, method: str, path: str, query: str, body: bytes) -> str:
    """The signature a caller sends (also used by tests and the bundled tools). The timestamp is not
    signed (PROTOCOLS §11); send it in `X-Request-Timestamp`."""
    return hmac.new(secret, canonical_message(method, path, query, body), hashlib.sha256).hexdigest()


class InternalVerifier:
    """Checks signed internal requests; the replay store lives in the database, shared by every worker."""

    def __init__(self, secret: bytes, db: Database) -> None:
        self._secret = secret
        self._db = db
        self._purged_at: float | None = None  # monotonic time of the last purge

    @property
    def secret(self) -> bytes:
        return self._secret

    def bearer_matches(self, token: str) -> bool:
        """Brokers that cannot sign (EMQX's HTTP authenticator sends fixed headers) may present the secret
        itself as a bearer token; compared in constant time."""
        return hmac.compare_digest(token.encode(), self._secret)

    async def verify(self, request: Request) -> None:
        signature = request.headers.get("x-request-signature", "")
        timestamp = request.headers.get("x-request-timestamp", "")
        if not signature or not timestamp:
            raise SignatureInvalid("Send X-Request-Timestamp and X-Request-Signature.")
        try:
            sent_at = int(timestamp)
        except ValueError as exc:
            raise SignatureInvalid("X-Request-Timestamp must be Unix seconds.") from exc
        if abs(time.time() - sent_at) > MAX_SKEW_SECONDS:
            raise SignatureInvalid("X-Request-Timestamp is more than 5 minutes from the station's clock.")
        body = await request.body()
        expected = sign(self._secret, request.method, request.url.path, request.url.query, body)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):  # bytes: any input
            raise SignatureInvalid("The request signature does not match.")
        await self._accept_once(expected)

    async def _accept_once(self, signature: str) -> None:
        """Record the signature; refuse it if a live row already holds it. One statement decides, so two
        workers receiving the same request at the same moment cannot both accept it."""
        now = datetime.now(UTC)
        async with self._db.session() as session:
            await self._purge(session, now)
            insert = postgresql_insert if self._db.dialect == "postgresql" else sqlite_insert
            stmt: Any = insert(SeenSignature).values(signature=signature, expires_at=now + REPLAY_MEMORY)
            stmt = stmt.on_conflict_do_update(  # an expired row no longer counts: take it over
                index_elements=["signature"],
                set_={"expires_at": stmt.excluded.expires_at},
                where=SeenSignature.expires_at <= now,
            )
            result = await session.execute(stmt)
            if getattr(result, "rowcount", 0) != 1:
                raise SignatureInvalid("This signed request was already used.")

    async def _purge(self, session: AsyncSession, now: datetime) -> None:
        if self._purged_at is not None and time.monotonic() - self._purged_at < PURGE_EVERY_SECONDS:
            return
        self._purged_at = time.monotonic()
        await session.execute(delete(SeenSignature).where(SeenSignature.expires_at <= now))
