"""The contract every broker admin adapter keeps (Mosquitto dynamic security, EMQX REST, …)."""

from __future__ import annotations

from typing import Protocol

from waystation.broker.acl import BrokerAccount


class BrokerUnavailable(Exception):
    """The broker (or its admin API) could not be reached or refused the change; the outbox retries."""


class BrokerAdminAdapter(Protocol):
    name: str
    # False for an adapter that only disconnects clients (`emqx-http`: EMQX asks the station about
    # accounts, there is nothing to hold or reconcile on the broker).
    manages_accounts: bool

    async def upsert_account(self, account: BrokerAccount, *, disconnect: bool = False) -> bool | None:
        """Create the account or bring it to exactly this password, client id and rules (idempotent).
        May return whether anything changed (reconcile statistics); None means "cannot tell".

        `disconnect`: the password was rotated (the outbox row says so, durably), so clients logged in
        with the old one must be disconnected. Adapters whose broker drops those clients by itself when
        the password changes may ignore it."""

    async def delete_account(self, username: str) -> None:
        """Remove the account and disconnect any client using it (idempotent: unknown is fine)."""

    async def list_usernames(self) -> set[str]:
        """Every account the broker holds (for reconcile)."""

    async def close(self) -> None: ...
