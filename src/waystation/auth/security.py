"""Password hashing (argon2id), token hashing and secret generation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from functools import lru_cache

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

# OWASP's argon2id baseline (19 MiB, 2 passes): safe, and light enough for a Raspberry Pi. The library
# default (64 MiB per hash) would add that much RSS for every concurrent login.
_hasher = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),))
# At most two hashes at once, so a burst of logins cannot push memory up without bound.
_hashing = threading.BoundedSemaphore(2)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Verified when a username is unknown, so a login takes as long whether or not the user exists."""
    return _hasher.hash(secrets.token_urlsafe(16))


MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    with _hashing:
        return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    with _hashing:
        if password_hash is None:
            _hasher.verify(password, _dummy_hash())
            return False
        try:
            return bool(_hasher.verify(password, password_hash))
        except Exception:  # a malformed stored hash is a failed login, not a crash
            return False


def is_password_hash(value: str) -> bool:
    """True if `value` is a hash this station's hasher can verify (not a plaintext password)."""
    try:
        return any(hasher.identify(value) for hasher in _hasher.hashers)
    except Exception:  # identify() refuses some inputs with an exception instead of False
        return False


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret(prefix: str = "", nbytes: int = 32) -> str:
    return f"{prefix}{secrets.token_urlsafe(nbytes)}"


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
