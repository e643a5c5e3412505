"""Broker accounts on Mosquitto through its dynamic security plugin (`BROKER_ADMIN=mosquitto-dynsec`).

The plugin is administered over MQTT itself: command batches go to `$CONTROL/dynamic-security/v1` and
the answers come back on `…/v1/response`, in order, each echoing the `correlationData` we sent. Every
account gets a role of the same name that holds exactly its rules:

    publish rule    → publishClientSend
    subscribe rule  → subscribeLiteral (or subscribePattern for a filter with wildcards), the matching
                      unsubscribe type, and publishClientReceive: Mosquitto 2.0 checks delivery too, so
                      without it a device could subscribe to its commands but would never receive one.

Behaviour of Mosquitto 2.0.11 that shapes this module (checked against the real broker):

- `modifyClient` disconnects the client's live connections, even when nothing really changed, and the
  password hash cannot be read back. An upsert therefore compares first (`getClient`, `getRole`) and
  stores a fingerprint of the password in the client's `textdescription`: an account that is already
  right is left alone, so a reconcile never kicks healthy devices. `modifyRole` does not disconnect.
- `deleteClient` disconnects the client at once, and it cannot log in again.
- Roles are a namespace of their own: a `dev-…` role left without its client is reported as an account,
  so a reconcile removes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import json
import logging
import os
import secrets
import ssl
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from waystation.broker.acl import ADMIN_USERNAME, AclRule, BrokerAccount, device_username
from waystation.broker.adapters.base import BrokerUnavailable
from waystation.config import MqttEndpoint

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Mosquitto's own default for dynsec password hashes. Our passwords are 256-bit random tokens, which no
# amount of key stretching makes stronger; more iterations would only slow every device login.
PBKDF2_ITERATIONS = 101
DEFAULT_ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto/mosquitto_dynamic_security.so",
)
NOT_FOUND_ERRORS = frozenset({"Client not found", "Role not found"})
# The admin role: exactly what administering the plugin needs (mosquitto_ctrl's `dynsec init` also grants
# `#` and `$SYS/#`; the station's admin account has no use for those).
ADMIN_ACLS: tuple[dict[str, Any], ...] = (
    {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "priority": 0, "allow": True},
    {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "priority": 0, "allow": True},
    {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "priority": 0, "allow": True},
    {"acltype": "unsubscribePattern", "topic": "$CONTROL/dynamic-security/#", "priority": 0, "allow": True},
)


def find_dynsec_plugin(configured: str | None = None) -> str | None:
    """Path of `mosquitto_dynamic_security.so`, or None when it is not installed."""
    if configured:
        return configured if Path(configured).is_file() else None
    for path in PLUGIN_CANDIDATES:
        if Path(path).is_file():
            return path
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    return found[0] if found else None


# --- passwords and ACLs ---------------------------------------------------------------------------


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 over a random 12-byte salt, both base64."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def password_matches(entry: dict[str, Any], password: str) -> bool:
    try:
        salt = base64.b64decode(entry["salt"])
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(entry["iterations"]))
        return secrets.compare_digest(base64.b64encode(digest).decode(), str(entry["password"]))
    except (KeyError, TypeError, ValueError):
        return False


def password_marker(password: str) -> str:
    """A fingerprint of the password, kept in the client's `textdescription` so an upsert can tell
    whether the broker already has this password. Safe to store: it is a hash of a 256-bit random
    secret (and the broker holds a hash of the password anyway)."""
    return "waystation:" + hashlib.sha256(b"waystation-dynsec\x00" + password.encode()).hexdigest()[:32]


def _has_wildcard(topic: str) -> bool:
    return any(level in {"+", "#"} for level in topic.split("/"))


def role_acls(rules: Iterable[AclRule], *, subscribe_any: bool = False) -> list[dict[str, Any]]:
    """The role ACLs for `rules`. Rules keep their order as in EMQX (the first match wins): earlier rules
    get a higher priority.

    `subscribe_any` is for the station's own account: it may subscribe to any filter (its device runtime
    subscribes to `station/#` to count stray topics), while what it actually receives is limited by
    publishClientReceive to its subscribe rules. Delivery is checked per message, so a flow's filter
    works as soon as its rule is in, whichever of the subscription and the rule came first."""
    rules = list(rules)
    acls: list[dict[str, Any]] = []
    for index, rule in enumerate(rules):
        priority = len(rules) - index
        if rule.action == "publish":
            acls.append(_acl("publishClientSend", rule.topic, priority, rule.allow))
            continue
        kind = "Pattern" if _has_wildcard(rule.topic) else "Literal"
        acls.append(_acl("publishClientReceive", rule.topic, priority, rule.allow))
        if not subscribe_any:
            acls.append(_acl(f"subscribe{kind}", rule.topic, priority, rule.allow))
            acls.append(_acl(f"unsubscribe{kind}", rule.topic, priority, rule.allow))
    if subscribe_any:
        acls.append(_acl("subscribePattern", "#", 0, True))
        acls.append(_acl("unsubscribePattern", "#", 0, True))
    return acls


def _acl(acltype: str, topic: str, priority: int, allow: bool) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": allow}


def _acl_key(acls: Iterable[dict[str, Any]]) -> list[tuple[str, str, int, bool]]:
    return sorted(
        (str(a.get("acltype")), str(a.get("topic")), int(a.get("priority", 0)), bool(a.get("allow")))
        for a in acls
    )


# --- the managed broker's configuration file ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str = field(repr=False)


@dataclass
class ManagedDynsec:
    """The dynamic-security state file of the embedded Mosquitto, prepared before each start.

    The station's two accounts are made right on every start (so a lost or edited file heals itself);
    every other client and role, such as the devices' accounts, is left as Mosquitto saved it."""

    plugin: str
    config_file: Path
    admin: Login
    station: Login
    station_rules: tuple[AclRule, ...]
    _prepared: bool = False

    def mosquitto_lines(self) -> list[str]:
        return [f"plugin {self.plugin}", f"plugin_opt_config_file {self.config_file}"]

    def prepare(self) -> None:
        # After the first start the station role belongs to the sync worker (flows change it), so a
        # restart of a crashed broker keeps the role Mosquitto saved.
        replace_station_role = not self._prepared
        data: dict[str, Any] = {}
        if self.config_file.exists():
            try:
                loaded = json.loads(self.config_file.read_text())
                data = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                log.warning("%s is not valid JSON; writing a fresh one", self.config_file)
        clients = [c for c in data.get("clients", []) if isinstance(c, dict)]
        roles = [r for r in data.get("roles", []) if isinstance(r, dict)]
        station_acls = role_acls(self.station_rules, subscribe_any=True)
        clients = _ensure_client(clients, self.admin, roles=[ADMIN_USERNAME], marker=None)
        clients = _ensure_client(
            clients,
            self.station,
            roles=[self.station.username],
            marker=password_marker(self.station.password),
        )
        roles = _ensure_role(roles, ADMIN_USERNAME, list(ADMIN_ACLS), replace=True)
        roles = _ensure_role(roles, self.station.username, station_acls, replace=replace_station_role)
        data["clients"] = clients
        data["roles"] = roles
        data.setdefault("groups", [])
        # Nothing that is not granted: the plugin's defaults let every client receive anything and
        # unsubscribe from anything.
        data["defaultACLAccess"] = {name: False for name in DEFAULT_ACL_TYPES}
        _write_private(self.config_file, json.dumps(data, indent=1))
        self._prepared = True


def _ensure_client(
    clients: list[dict[str, Any]], login: Login, *, roles: list[str], marker: str | None
) -> list[dict[str, Any]]:
    current = next((c for c in clients if c.get("username") == login.username), None)
    if current is not None and password_matches(current, login.password):
        entry = dict(current)
    else:
        entry = {"username": login.username, **hash_password(login.password)}
    entry.pop("disabled", None)
    entry.pop("clientid", None)
    entry["roles"] = [{"rolename": name} for name in roles]
    if marker is not None:
        entry["textdescription"] = marker
    return [c for c in clients if c.get("username") != login.username] + [entry]


def _ensure_role(
    roles: list[dict[str, Any]], name: str, acls: list[dict[str, Any]], *, replace: bool
) -> list[dict[str, Any]]:
    if not replace and any(r.get("rolename") == name for r in roles):
        return roles
    return [r for r in roles if r.get("rolename") != name] + [{"rolename": name, "acls": acls}]


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only (the file holds password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# --- the adapter ----------------------------------------------------------------------------------


class DynsecAdapter:
    """Applies `BrokerAccount`s through the dynamic security plugin. It keeps one MQTT connection as the
    admin account, opened on first use and re-opened after a loss; every failure (broker down, login
    refused, a command rejected, no answer in time) raises `BrokerUnavailable` so the outbox retries."""

    name = "mosquitto-dynsec"
    manages_accounts = True

    def __init__(
        self,
        endpoint: MqttEndpoint,
        admin: Login,
        *,
        subscribe_any: Collection[str] = (),
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self._admin = admin
        self._subscribe_any = frozenset(subscribe_any)
        self._timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._listener: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self.connects = 0
        #: Called (in the event loop) when an established admin connection drops; the sync worker uses it
        #: to reconcile once the broker is back.
        self.on_connection_lost: Callable[[], None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    # --- the adapter contract ------------------------------------------------------------------

    async def upsert_account(self, account: BrokerAccount, *, disconnect: bool = False) -> bool:
        """Create the account or bring it to exactly this state; True if anything had to change.
        (`disconnect` needs nothing more: a new password means `modifyClient`, which drops the clients.)"""
        role = account.username
        acls = role_acls(account.rules, subscribe_any=account.username in self._subscribe_any)
        marker = password_marker(account.password)
        got_client, got_role = await self._call(
            [{"command": "getClient", "username": account.username}, {"command": "getRole", "rolename": role}]
        )
        _raise_errors([got_client, got_role], tolerate=NOT_FOUND_ERRORS)
        changes: list[dict[str, Any]] = []
        if _missing(got_role):
            changes.append({"command": "createRole", "rolename": role, "acls": acls})
        elif _acl_key(_data(got_role, "role").get("acls", [])) != _acl_key(acls):
            # Replaces the whole list, so rules that were dropped go away; connections stay up.
            changes.append({"command": "modifyRole", "rolename": role, "acls": acls})
        wanted_roles = [{"rolename": role}]
        if _missing(got_client):
            create: dict[str, Any] = {
                "command": "createClient",
                "username": account.username,
                "password": account.password,
                "textdescription": marker,
                "roles": wanted_roles,
            }
            if account.client_id:
                create["clientid"] = account.client_id
            changes.append(create)
        else:
            client = _data(got_client, "client")
            roles = sorted(str(r.get("rolename")) for r in client.get("roles", []) if isinstance(r, dict))
            if (
                client.get("textdescription") != marker
                or (client.get("clientid") or None) != (account.client_id or None)
                or roles != [role]
            ):
                # Disconnects the account's clients: right when the password or client id changed.
                changes.append(
                    {
                        "command": "modifyClient",
                        "username": account.username,
                        "password": account.password,
                        "clientid": account.client_id or "",
                        "textdescription": marker,
                        "roles": wanted_roles,
                    }
                )
            if client.get("disabled"):
                changes.append({"command": "enableClient", "username": account.username})
        if changes:
            _raise_errors(await self._call(changes))
        return bool(changes)

    async def delete_account(self, username: str) -> None:
        """Remove the account and its role. Mosquitto disconnects the account's clients itself."""
        responses = await self._call(
            [
                {"command": "deleteClient", "username": username},
                {"command": "deleteRole", "rolename": username},
            ]
        )
        _raise_errors(responses, tolerate=NOT_FOUND_ERRORS)

    async def list_usernames(self) -> set[str]:
        clients, roles = await self._call(
            [{"command": "listClients", "count": -1}, {"command": "listRoles", "count": -1}]
        )
        _raise_errors([clients, roles])
        names = {str(n) for n in _data(clients).get("clients", [])}
        prefix = device_username("")
        orphans = {str(r) for r in _data(roles).get("roles", []) if str(r).startswith(prefix)}
        return names | orphans

    async def close(self) -> None:
        self._closing = True
        async with self._lock:
            await self._disconnect()

    # --- extras (status, tests) ------------------------------------------------------------------

    async def get_account(self, username: str) -> dict[str, Any] | None:
        """The client as the plugin reports it (`clientid`, `roles`, …, never a password), or None."""
        (response,) = await self._call([{"command": "getClient", "username": username}])
        if _missing(response):
            return None
        _raise_errors([response])
        return _data(response, "client")

    async def get_role_acls(self, rolename: str) -> list[dict[str, Any]] | None:
        (response,) = await self._call([{"command": "getRole", "rolename": rolename}])
        if _missing(response):
            return None
        _raise_errors([response])
        return list(_data(response, "role").get("acls", []))

    async def ensure_default_deny(self) -> None:
        """Deny whatever no role grants (an external broker's plugin defaults allow receiving)."""
        (current,) = await self._call([{"command": "getDefaultACLAccess"}])
        _raise_errors([current])
        acls = _data(current).get("acls", [])
        if all(not a.get("allow") for a in acls if isinstance(a, dict)) and len(acls) >= 4:
            return
        wanted = [{"acltype": name, "allow": False} for name in DEFAULT_ACL_TYPES]
        _raise_errors(await self._call([{"command": "setDefaultACLAccess", "acls": wanted}]))

    async def command(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send raw dynsec commands (tests and diagnostics); returns the plugin's responses."""
        return await self._call(commands)

    # --- transport -----------------------------------------------------------------------------

    async def _call(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async with self._lock:
            if self._closing:
                raise BrokerUnavailable("the dynsec adapter is closed")
            client = await self._connect()
            batch = uuid.uuid4().hex[:16]
            sent = [{**c, "correlationData": f"{batch}:{i}"} for i, c in enumerate(commands)]
            future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
            self._waiting[batch] = future
            try:
                await client.publish(CONTROL_TOPIC, orjson.dumps({"commands": sent}), qos=1)
                responses = await asyncio.wait_for(future, self._timeout)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                await self._disconnect()
                reason = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
                raise BrokerUnavailable(f"Mosquitto dynsec command failed ({reason})") from None
            finally:
                self._waiting.pop(batch, None)
        # Answers come in the order sent; the correlation data is checked anyway, so a late answer to an
        # earlier, timed-out batch can never be taken for this one.
        by_id = {str(r.get("correlationData")): r for r in responses if isinstance(r, dict)}
        try:
            return [by_id[c["correlationData"]] for c in sent]
        except KeyError:
            raise BrokerUnavailable("Mosquitto dynsec answered with missing responses") from None

    async def _connect(self) -> aiomqtt.Client:
        if self._client is not None:
            return self._client
        stack = contextlib.AsyncExitStack()
        client = aiomqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            username=self._admin.username,
            password=self._admin.password,
            identifier=f"{self._admin.username}-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=ssl.create_default_context() if self.endpoint.tls else None,
            timeout=self._timeout,
            keepalive=30,
        )
        try:
            await stack.enter_async_context(client)
            await client.subscribe(RESPONSE_TOPIC, qos=1)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await stack.aclose()
            rc = getattr(exc, "rc", None)
            if rc is not None and ("authoriz" in str(rc).lower() or "password" in str(rc).lower()):
                detail = f"Mosquitto refused the admin login {self._admin.username!r}"
            else:
                detail = f"cannot reach Mosquitto at {self.endpoint.host}:{self.endpoint.port}"
            raise BrokerUnavailable(f"{detail} ({type(exc).__name__})") from None
        self._client, self._stack = client, stack
        self.connects += 1
        self._listener = asyncio.create_task(self._listen(client), name="dynsec-responses")
        log.info("dynsec admin connected to %s:%d", self.endpoint.host, self.endpoint.port)
        return client

    async def _listen(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self._dispatch(message.payload)
        except aiomqtt.MqttError:
            pass
        if self._client is client and not self._closing:
            # The connection dropped under us (broker restart, network): forget it, fail the waiters, and
            # let the next call reconnect.
            log.warning("dynsec admin connection to %s:%d lost", self.endpoint.host, self.endpoint.port)
            self._client = None
            stack, self._stack = self._stack, None
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(aiomqtt.MqttError("connection lost"))
            if stack is not None:
                with contextlib.suppress(Exception):
                    await stack.aclose()
            if self.on_connection_lost is not None:
                self.on_connection_lost()

    def _dispatch(self, payload: Any) -> None:
        try:
            body = orjson.loads(payload)
            responses = body["responses"]
            batch = str(responses[0]["correlationData"]).split(":", 1)[0]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            log.debug("ignoring a dynsec response we cannot match")
            return
        future = self._waiting.get(batch)
        if future is not None and not future.done():
            future.set_result(list(responses))

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        stack, self._stack = self._stack, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        if stack is not None and client is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


def _missing(response: dict[str, Any]) -> bool:
    return response.get("error") in NOT_FOUND_ERRORS


def _data(response: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    data = response.get("data")
    if not isinstance(data, dict):
        return {}
    if key is None:
        return data
    inner = data.get(key)
    return inner if isinstance(inner, dict) else {}


def _raise_errors(responses: list[dict[str, Any]], tolerate: Collection[str] = ()) -> None:
    for response in responses:
        error = response.get("error")
        if error and error not in tolerate:
            # The plugin's messages are short fixed texts ("Client already exists"); they never echo
            # the command, so no password can leak into the outbox or the log.
            raise BrokerUnavailable(f"Mosquitto dynsec {response.get('command')} failed: {str(error)[:200]}")
