"""JWT access tokens (HS256) signed with rotating keys.

Every token names its key in the `kid` header. The key ring holds the current signing key and the retired
ones that still verify until the last token they signed has expired (`KeyRing` in `auth/keys.py` keeps it
in step with the `signing_keys` table).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from waystation.errors import TokenInvalid

ISSUER = "waystation"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    role: str
    jti: str
    iat: int
    exp: datetime
    username: str
    sid: str | None = None  # the login (refresh-token family) this token belongs to
    pwv: int | None = None  # the user's password version when it was issued


class UnknownSigningKey(TokenInvalid):
    """The token names a key this process does not hold (perhaps one another worker just made)."""

    def __init__(self, kid: str) -> None:
        super().__init__("The access token was signed with an unknown or retired key.")
        self.kid = kid


@dataclass(frozen=True)
class VerifyKey:
    secret: bytes
    verify_until: datetime | None  # None while the key still signs


class TokenSigner:
    def __init__(self, lifetime: timedelta) -> None:
        self.lifetime = lifetime
        self._keys: dict[str, VerifyKey] = {}
        self._current: str | None = None

    @property
    def current_kid(self) -> str | None:
        return self._current

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    def install(self, current_kid: str, keys: dict[str, VerifyKey]) -> None:
        """Replace the key ring (called by the KeyRing after every load or rotation)."""
        if current_kid not in keys:
            raise ValueError("the current key must be part of the ring")
        self._keys = dict(keys)
        self._current = current_kid

    def issue(
        self, user_id: int, username: str, role: str, sid: str | None = None, pwv: int | None = None
    ) -> tuple[str, int]:
        if self._current is None:
            raise RuntimeError("no signing key loaded yet")
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
        if sid is not None:
            claims["sid"] = sid
        if pwv is not None:
            claims["pwv"] = pwv
        key = self._keys[self._current].secret
        token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": self._current})
        return token, int(self.lifetime.total_seconds())

    def verify(self, token: str) -> AccessClaims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise TokenInvalid("The access token is malformed.") from exc
        if not isinstance(kid, str) or not kid:
            raise TokenInvalid("The access token names no signing key.")
        key = self._keys.get(kid)
        if key is None:
            raise UnknownSigningKey(kid)
        if key.verify_until is not None and key.verify_until <= datetime.now(UTC):
            raise TokenInvalid("The access token was signed with an unknown or retired key.")
        try:
            claims = jwt.decode(
                token,
                key.secret,
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
            iat=int(claims["iat"]),
            exp=datetime.fromtimestamp(int(claims["exp"]), UTC),
            username=str(claims.get("name", "")),
            sid=str(claims["sid"]) if "sid" in claims else None,
            pwv=int(claims["pwv"]) if isinstance(claims.get("pwv"), int) else None,
        )
