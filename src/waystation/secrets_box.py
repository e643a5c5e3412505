"""Encryption at rest for secrets whose plaintext is needed later (broker passwords of flow servers,
Wi-Fi credentials, plugin configurations): Fernet (AES-128-CBC + HMAC-SHA256) with a key kept in the
data directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, data_dir: Path) -> None:
        self._fernet = Fernet(_load_or_create_key(data_dir / "keys" / "secrets.key"))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this station's key") from exc

    # A JSON column that may hold secrets (a plugin's config) keeps its type and stores this envelope:
    # `{"$sealed": "<token>"}`. Values without it are legacy clear configs, read as they are.
    def seal_json(self, value: dict[str, Any]) -> dict[str, str]:
        return {SEALED_JSON_KEY: self.seal(json.dumps(value, sort_keys=True, separators=(",", ":")))}

    def open_json(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        if not stored:
            return {}
        if is_sealed_json(stored):
            value = json.loads(self.open(str(stored[SEALED_JSON_KEY])))
            return value if isinstance(value, dict) else {}
        return dict(stored)


SEALED_JSON_KEY = "$sealed"


def is_sealed_json(stored: Any) -> bool:
    return isinstance(stored, dict) and set(stored) == {SEALED_JSON_KEY}


def _load_or_create_key(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
