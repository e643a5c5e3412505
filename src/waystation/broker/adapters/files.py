"""Broker accounts in files the embedded broker reads (`WAYSTATION_BROKER_ADMIN=password-file`).

The managed broker without the dynamic security plugin (Mosquitto without `mosquitto_dynamic_security.so`,
or the `amqtt` fallback) still refuses anonymous clients and holds every device to its own topics: the
station writes the accounts into files in `DATA_DIR/broker/` and asks the broker to reload them.

- `accounts.json` (0600) is the state the station keeps: per username a PBKDF2-SHA512 hash of the
  password in Mosquitto 2's `$7$<iterations>$<salt>$<hash>` form, the client id it is tied to (None for
  the station's own account) and its rules. The `amqtt` fallback reads it directly
  (`broker/amqtt_child.py`).
- For Mosquitto it is rendered into `passwords` (`password_file`: `username:$7$…`, what
  `mosquitto_passwd` writes) and `acl` (`acl_file`: `user …` followed by `topic write|read …`), both 0600.

After a change the broker gets SIGHUP. Mosquitto 2.0 then re-reads both files and disconnects every client
whose password no longer matches or whose account is gone (checked against 2.0.11); the `amqtt` child does
the same itself. Mosquitto's password file cannot tie an account to a client id, so with Mosquitto a
device's credentials work with any client id (its rules still name only its own topics); `amqtt` checks
the client id.

Written by hand: neither broker has an API for these files, and both formats are a few lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from waystation.broker.acl import AclRule, BrokerAccount

log = logging.getLogger(__name__)

ACCOUNTS_FILE = "accounts.json"
PASSWORD_FILE = "passwords"
ACL_FILE = "acl"
# Mosquitto's own default (mosquitto_passwd 2.0). The passwords are 256-bit random tokens, which key
# stretching does not make stronger; more iterations would only slow every login.
PBKDF2_ITERATIONS = 101


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, 12-byte salt, base64 (Mosquitto 2's format)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_matches(stored: str, password: str) -> bool:
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        computed = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(base64.b64encode(computed).decode(), digest)
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True, slots=True)
class FileAccount:
    username: str
    password_hash: str
    client_id: str | None
    rules: tuple[AclRule, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "password_hash": self.password_hash,
            "client_id": self.client_id,
            "publish": [r.topic for r in self.rules if r.action == "publish" and r.allow],
            "subscribe": [r.topic for r in self.rules if r.action == "subscribe" and r.allow],
        }

    @classmethod
    def from_json(cls, username: str, data: dict[str, Any]) -> FileAccount:
        rules = tuple(AclRule("publish", str(t)) for t in data.get("publish", [])) + tuple(
            AclRule("subscribe", str(t)) for t in data.get("subscribe", [])
        )
        client_id = data.get("client_id")
        return cls(username, str(data["password_hash"]), str(client_id) if client_id else None, rules)


def load_accounts(path: Path) -> dict[str, FileAccount]:
    """The accounts in `accounts.json`; an unreadable file counts as empty (the reconcile refills it)."""
    try:
        raw = json.loads(path.read_text())
        users = raw.get("users", {}) if isinstance(raw, dict) else {}
        return {
            str(name): FileAccount.from_json(str(name), entry)
            for name, entry in users.items()
            if isinstance(entry, dict) and "password_hash" in entry
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s is not a valid accounts file; starting from an empty one", path)
        return {}


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only (the files hold password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of its own per thread: start-up and the sync may write at the same moment.
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class AccountFiles:
    """The account files of the embedded broker. The station's own account is made right on every start
    (so a lost or edited file heals itself); device accounts are the sync worker's."""

    def __init__(
        self,
        kind: Literal["mosquitto", "amqtt"],
        broker_dir: Path,
        station: tuple[str, str],
        station_rules: tuple[AclRule, ...],
    ) -> None:
        self.kind = kind
        self.broker_dir = broker_dir
        self.accounts_path = broker_dir / ACCOUNTS_FILE
        self.password_path = broker_dir / PASSWORD_FILE
        self.acl_path = broker_dir / ACL_FILE
        self.station_username, self._station_password = station
        self.station_rules = station_rules
        self.accounts: dict[str, FileAccount] = {}
        # Set by the embedded broker: asks the running child to re-read the files (SIGHUP); False when
        # no child runs right now (its next start reads them anyway).
        self.reload: Callable[[], bool] = lambda: False
        self._prepared = False

    def mosquitto_lines(self) -> list[str]:
        return [f"password_file {self.password_path}", f"acl_file {self.acl_path}"]

    def prepare(self) -> None:
        """Before each start of the broker: load the state and make sure the station's account is in it."""
        self.accounts = load_accounts(self.accounts_path)
        current = self.accounts.get(self.station_username)
        password_hash = (
            current.password_hash
            if current is not None and password_matches(current.password_hash, self._station_password)
            else hash_password(self._station_password)
        )
        # After the first start the station's rules belong to the sync worker (flows change them).
        rules = self.station_rules if current is None or not self._prepared else current.rules
        self.accounts[self.station_username] = FileAccount(self.station_username, password_hash, None, rules)
        self.write()
        self._prepared = True

    def write(self) -> None:
        users = {name: self.accounts[name].as_json() for name in sorted(self.accounts)}
        _write_private(self.accounts_path, json.dumps({"users": users}, indent=1))
        if self.kind == "mosquitto":
            _write_private(self.password_path, self.render_passwords())
            _write_private(self.acl_path, self.render_acl())

    def render_passwords(self) -> str:
        return "".join(f"{name}:{self.accounts[name].password_hash}\n" for name in sorted(self.accounts))

    def render_acl(self) -> str:
        """Mosquitto's acl_file: `read` grants subscribing and receiving, `write` publishing; an account
        gets nothing else (no `pattern` lines, no anonymous section)."""
        lines = ["# Generated by Waystation from its database; edits are overwritten."]
        for name in sorted(self.accounts):
            if any(c in name for c in "\r\n"):
                continue  # cannot be written safely (usernames are ours: never happens)
            lines.append("")
            lines.append(f"user {name}")
            for rule in self.accounts[name].rules:
                if rule.allow:
                    access = "write" if rule.action == "publish" else "read"
                    lines.append(f"topic {access} {rule.topic}")
        return "\n".join(lines) + "\n"


class FilesAdapter:
    """Applies `BrokerAccount`s to the account files and has the broker reload them. An account that is
    already right is not touched, so a reconcile neither rewrites the files nor disconnects anyone."""

    name = "password-file"
    manages_accounts = True

    def __init__(self, files: AccountFiles) -> None:
        self.files = files
        self._batching = False
        self._dirty = False

    async def upsert_account(self, account: BrokerAccount, *, disconnect: bool = False) -> bool:
        """(`disconnect` needs nothing more: the reload drops clients whose password no longer matches.)"""
        current = self.files.accounts.get(account.username)
        same_password = current is not None and password_matches(current.password_hash, account.password)
        wanted = FileAccount(
            account.username,
            current.password_hash
            if current is not None and same_password
            else hash_password(account.password),
            account.client_id,
            account.rules,
        )
        if wanted == current:
            return False
        self.files.accounts[account.username] = wanted
        await self._changed()
        return True

    async def delete_account(self, username: str) -> None:
        if self.files.accounts.pop(username, None) is not None:
            await self._changed()

    async def list_usernames(self) -> set[str]:
        return set(self.files.accounts)

    async def close(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Write and reload once for many changes (a reconcile)."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            if self._dirty:
                await self._changed()

    async def _changed(self) -> None:
        if self._batching:
            self._dirty = True
            return
        self._dirty = False
        await asyncio.to_thread(self.files.write)
        if not self.files.reload():
            log.debug("broker files written; the broker is not running and reads them when it starts")
