"""JWT access tokens (HS256) signed with a key kept in the data directory."""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from waystation.errors import TokenInvalid

ISSUER = "waystation"
ALGORITHM = "HS256"


def load_or_create_key(data_dir: Path) -> bytes:
    """The station's signing key: 32 random bytes in `keys/jwt.key`, readable by the owner only."""
    path = data_dir / "keys" / "jwt.key"
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    role: str
    jti: str
    exp: datetime
    username: str


class TokenSigner:
    def __init__(self, key: bytes, lifetime: timedelta, kid: str = "k1") -> None:
        self._key = key
        self.lifetime = lifetime
        self.kid = kid

    def issue(self, user_id: int, username: str, role: str) -> tuple[str, int]:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "name": username,
            "role": role,
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "exp": int((now + self.lifetime).timestamp()),
            "iss": ISSUER,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, int(self.lifetime.total_seconds())

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],  # never trust the token's own `alg` (no `none`, no RS/HS mix-up)
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat", "jti", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenInvalid("The access token is invalid or expired.") from exc
        return AccessClaims(
            sub=str(claims["sub"]),
            role=str(claims.get("role", "viewer")),
            jti=str(claims["jti"]),
            exp=datetime.fromtimestamp(int(claims["exp"]), UTC),
            username=str(claims.get("name", "")),
        )
