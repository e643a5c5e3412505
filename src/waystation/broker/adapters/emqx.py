"""Broker accounts on EMQX 5 through its management REST API (`WAYSTATION_BROKER_ADMIN=emqx`).

Each account becomes a user of the built-in database authenticator (EMQX stores its own salted hash of
the password) plus a rule set of the built-in database authorizer, keyed by username:

    POST/PUT/DELETE /api/v5/authentication/{authenticator}/users[/{user_id}]
    POST/PUT/DELETE /api/v5/authorization/sources/built_in_database/rules/users[/{username}]
    GET /api/v5/clients?username=…, DELETE /api/v5/clients/{clientid}   (disconnect on delete)

The API key and secret are sent as HTTP basic auth. EMQX's built-in database cannot tie a username to a
client id; `BrokerAccount.client_id` is enforced only in `emqx-http` mode (the station answers EMQX's
authentication calls itself, see `broker/emqx_http.py`).

EMQX keeps the sessions of a user whose password changed or who was deleted, so both end with a kick.
Whether a password changed is told by the outbox row (`disconnect=True` for a rotation), never by memory
of this process: a rotation queued before a restart still ends the old sessions when it is applied.

`EmqxSessionKicker` is the `emqx-http` side: EMQX asks the station about accounts, so there is nothing to
push, but a disabled, deleted or rotated device must still lose its live session, which only the same
management API can do.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from waystation.broker.acl import AclRule, BrokerAccount
from waystation.broker.adapters.base import BrokerUnavailable
from waystation.config import Settings

log = logging.getLogger(__name__)

DEFAULT_AUTHENTICATOR = "password_based:built_in_database"
RULES_PATH = "/api/v5/authorization/sources/built_in_database/rules/users"
PAGE_LIMIT = 100  # EMQX's default page size; its maximum is 10 000
MAX_PAGES = 10_000  # a broker that always answers `hasnext` must not keep us paging forever


def _segment(value: str) -> str:
    """One escaped path segment: `password_based:built_in_database` → `password_based%3Abuilt_in_database`."""
    return quote(value, safe="")


def emqx_rules(rules: tuple[AclRule, ...]) -> list[dict[str, Any]]:
    """Our rules in the built-in database's shape; order is kept (EMQX applies the first match). A final
    deny-all makes the account least-privilege even on a broker left at EMQX's `no_match = allow`."""
    allowed = [
        {"topic": r.topic, "permission": "allow" if r.allow else "deny", "action": r.action} for r in rules
    ]
    return [*allowed, {"topic": "#", "permission": "deny", "action": "all"}]


class EmqxAdapter:
    """Applies `BrokerAccount`s to EMQX 5. Every call is idempotent; failures raise `BrokerUnavailable` so
    the outbox retries them."""

    name = "emqx"
    manages_accounts = True

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        authenticator_id: str = DEFAULT_AUTHENTICATOR,
        *,
        timeout: float = 10.0,
        page_limit: int = PAGE_LIMIT,
    ) -> None:
        self._users = f"/api/v5/authentication/{_segment(authenticator_id)}/users"
        self._page_limit = page_limit
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=httpx.BasicAuth(api_key, api_secret),
            timeout=timeout,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EmqxAdapter:
        if not (settings.emqx_api_url and settings.emqx_api_key and settings.emqx_api_secret):
            raise ValueError(
                f"WAYSTATION_BROKER_ADMIN={settings.broker_admin} needs WAYSTATION_EMQX_API_URL, "
                "WAYSTATION_EMQX_API_KEY and WAYSTATION_EMQX_API_SECRET"
            )
        return cls(
            settings.emqx_api_url,
            settings.emqx_api_key,
            settings.emqx_api_secret,
            settings.emqx_authenticator_id,
        )

    # --- the adapter contract ------------------------------------------------------------------------

    async def upsert_account(self, account: BrokerAccount, *, disconnect: bool = False) -> None:
        user = {"user_id": account.username, "password": account.password, "is_superuser": False}
        created = await self._request("POST", self._users, json=user, ok=(201, 409))
        if created.status_code == 409:  # it exists: bring it to this password
            await self._request(
                "PUT",
                f"{self._users}/{_segment(account.username)}",
                json={"password": account.password, "is_superuser": False},
                ok=(200,),
            )
        rules = {"username": account.username, "rules": emqx_rules(account.rules)}
        added = await self._request("POST", RULES_PATH, json=[rules], ok=(204, 409))
        if added.status_code == 409:  # replace the whole rule set, so removed rules go away too
            await self._request("PUT", f"{RULES_PATH}/{_segment(account.username)}", json=rules, ok=(204,))
        if disconnect:
            # EMQX keeps the sessions opened with the old password: a rotation ends them. (A plain
            # re-apply, such as a reconcile, does not: healthy devices stay connected.) Kicked last, so a
            # client that reconnects at once meets the new password and rules.
            await self.kick(account.username)

    async def delete_account(self, username: str) -> None:
        await self._request("DELETE", f"{self._users}/{_segment(username)}", ok=(204, 404))
        await self._request("DELETE", f"{RULES_PATH}/{_segment(username)}", ok=(204, 404))
        # Removing the user does not end its sessions: disconnect every client logged in with it.
        await self.kick(username)

    async def list_usernames(self) -> set[str]:
        """Users of the authenticator and owners of rule sets: a rule set left without its user is an
        account too, so a reconcile removes it."""
        names = {row["user_id"] for row in await self._all_pages(self._users, {})}
        names |= {row["username"] for row in await self._all_pages(RULES_PATH, {})}
        return {str(n) for n in names}

    async def close(self) -> None:
        await self._client.aclose()

    # --- HTTP ------------------------------------------------------------------------------------

    async def kick(self, username: str) -> None:
        """Disconnect every client logged in as `username` (`DELETE /api/v5/clients/{clientid}`)."""
        rows = await self._all_pages("/api/v5/clients", {"username": username})
        for row in rows:
            if row.get("username") == username and "clientid" in row:
                await self._request(
                    "DELETE", f"/api/v5/clients/{_segment(str(row['clientid']))}", ok=(204, 404)
                )

    async def _all_pages(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self._request(
                "GET", path, params={**params, "page": str(page), "limit": str(self._page_limit)}, ok=(200,)
            )
            body = self._json(response, path)
            data = body.get("data")
            if not isinstance(data, list):
                raise BrokerUnavailable(f"EMQX answered GET {path} without a data list")
            rows.extend(row for row in data if isinstance(row, dict))
            meta = body.get("meta") or {}
            # `hasnext` is what EMQX reports; older 5.0 releases only give `count`.
            has_next = meta.get("hasnext")
            if has_next is None:
                has_next = isinstance(meta.get("count"), int) and page * self._page_limit < meta["count"]
            if not has_next or not data:
                return rows
        raise BrokerUnavailable(f"EMQX kept reporting more pages of {path} after {MAX_PAGES}")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...],
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            # Only the kind of failure: the exception text may hold the URL's user info.
            raise BrokerUnavailable(f"EMQX API unreachable ({type(exc).__name__})") from None
        if response.status_code in ok:
            return response
        # EMQX's error body is {"code": "...", "message": "..."}; only the code is passed on, as the
        # message may echo request data.
        code = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                code = str(body.get("code", ""))[:64]
        except ValueError:
            pass
        if response.status_code in (401, 403):
            detail = "EMQX refused the API key or secret"
        elif response.status_code >= 500:
            detail = "EMQX API failed"
        else:
            detail = "EMQX API rejected the request"
        log.debug("EMQX %s %s answered %d %s", method, path, response.status_code, code)
        raise BrokerUnavailable(f"{detail}: {method} {path} -> {response.status_code} {code}".rstrip())

    @staticmethod
    def _json(response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise BrokerUnavailable(f"EMQX answered GET {path} with something that is not JSON") from None
        if not isinstance(body, dict):
            raise BrokerUnavailable(f"EMQX answered GET {path} with something that is not an object")
        return body


class EmqxSessionKicker:
    """`emqx-http` with the management API configured: EMQX asks the station about every login, so no
    account lives on EMQX; this only ends the live sessions of devices that were disabled, deleted or
    given a new password, through the same API calls as `EmqxAdapter.kick`."""

    name = "emqx-http"
    manages_accounts = False

    def __init__(self, api: EmqxAdapter) -> None:
        self._api = api

    @classmethod
    def from_settings(cls, settings: Settings) -> EmqxSessionKicker:
        return cls(EmqxAdapter.from_settings(settings))

    async def upsert_account(self, account: BrokerAccount, *, disconnect: bool = False) -> bool:
        if disconnect:  # a new password: sessions opened with the old one end
            await self._api.kick(account.username)
        return False

    async def delete_account(self, username: str) -> None:
        await self._api.kick(username)

    async def list_usernames(self) -> set[str]:
        return set()

    async def close(self) -> None:
        await self._api.close()
