"""The pure-Python fallback broker (amqtt), run as a child process bound to loopback.

Used only when no `mosquitto` binary is installed:
`python -m waystation.broker.amqtt_child HOST PORT [ACCOUNTS_FILE]`.

With an accounts file (`WAYSTATION_BROKER_ADMIN=password-file`, the default) every client logs in with an
account from it: the password (Mosquitto's `$7$` PBKDF2-SHA512 hash), the client id the account is tied
to, and topic rules checked on every publish, subscription and delivery (broker/adapters/files.py writes
it). SIGHUP re-reads the file and disconnects clients whose account is gone or whose password changed.
amqtt's own FileAuthPlugin reads its file once and has no client-id check, hence these two plugins.
Without an accounts file (`WAYSTATION_BROKER_ADMIN=none`) anyone on loopback may connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from waystation.broker.acl import permits
from waystation.broker.adapters.files import FileAccount, load_accounts, password_matches

log = logging.getLogger("waystation.amqtt")


class AccountStore:
    """The accounts file as last read, shared by the two plugins of this process."""

    path: Path | None = None
    accounts: dict[str, FileAccount] = {}  # one store per process

    @classmethod
    def load(cls, path: Path) -> None:
        cls.path = path
        cls.accounts = load_accounts(path)

    @classmethod
    def authenticates(cls, username: str | None, password: str | None, client_id: str | None) -> bool:
        account = cls.accounts.get(username or "")
        if account is None:
            return False
        password_ok = password_matches(account.password_hash, password or "")
        client_ok = account.client_id is None or hmac.compare_digest(
            (client_id or "").encode(), account.client_id.encode()
        )
        return password_ok and client_ok


class AccountsAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Allows exactly the accounts of the file (no anonymous clients, the right client id)."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool | None:
        return AccountStore.authenticates(session.username, session.password, session.client_id)


class AccountsTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Each account may publish, subscribe to and receive only what its rules name."""

    @dataclass
    class Config:
        pass

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or not topic or action is None:
            return False
        account = AccountStore.accounts.get(session.username or "")
        if account is None or (account.client_id is not None and session.client_id != account.client_id):
            return False
        kind: Literal["publish", "subscribe", "receive"] = (
            "publish"
            if action == Action.PUBLISH
            else "subscribe"
            if action == Action.SUBSCRIBE
            else "receive"
        )
        return any(permits(rule, topic, kind) for rule in account.rules)


async def _reload(broker: Broker) -> None:
    """Re-read the accounts file and end the sessions it no longer allows (as Mosquitto does on SIGHUP)."""
    if AccountStore.path is None:
        return
    AccountStore.load(AccountStore.path)
    for session, handler in list(broker.sessions.values()):
        if not session.transitions.is_connected():
            continue
        if AccountStore.authenticates(session.username, session.password, session.client_id):
            continue
        log.warning("disconnecting %s: its account changed", session.client_id)
        with contextlib.suppress(Exception):  # the same steps amqtt takes when a client is taken over
            await handler.handle_connection_closed()
            await handler.stop()


async def serve(host: str, port: int, accounts: Path | None) -> None:
    plugins: dict[str, Any]
    if accounts is not None:
        AccountStore.load(accounts)
        plugins = {
            f"{__name__}.AccountsAuthPlugin": {},
            f"{__name__}.AccountsTopicPlugin": {},
        }
    else:
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 5000}},
        "plugins": plugins,
    }
    broker = Broker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(_reload(broker))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Before the listener opens: the station only signals a broker that accepts connections.
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await broker.start()
    print(f"amqtt broker listening on {host}:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s amqtt %(levelname)s %(message)s")
    host, port = sys.argv[1], int(sys.argv[2])
    accounts = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    if host not in {"127.0.0.1", "localhost", "::1"}:
        # A pure-Python fallback without TLS: loopback only.
        print("the amqtt fallback broker binds to loopback only", file=sys.stderr)
        host = "127.0.0.1"
    asyncio.run(serve(host, port, accounts))


if __name__ == "__main__":
    main()
