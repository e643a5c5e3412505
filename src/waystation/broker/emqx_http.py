"""EMQX asks the station (`WAYSTATION_BROKER_ADMIN=emqx-http`, PROTOCOLS §11).

EMQX 5's HTTP authenticator, HTTP authorizer and a rule-engine webhook call:

    POST /api/internal/emqx/authn   {"username","password","clientid","peerhost",…}
                                    → {"result": "allow"|"deny"|"ignore", "is_superuser": false}
    POST /api/internal/emqx/authz   {"username","clientid","topic","action"} → {"result": "allow"|"deny"}
    POST /api/internal/emqx/events  rule-engine payloads of `client.connected` / `client.disconnected`

Callers sign the request (`X-Request-Timestamp` + `X-Request-Signature`) or, since EMQX can only send fixed
headers, present the internal secret as `Authorization: Bearer …`.

Accounts are the database's: a device's `DeviceCredential` (password as SHA-256, a required client id, the
device enabled) and the station's own account (the user and password of `WAYSTATION_MQTT_URL`). Answers are
cached per username for `emqx_auth_cache_seconds` (bounded LRU), so a reconnect storm costs one database
query per username; the bus events that change an account (`broker.outbox`, `device.updated`,
`device.deleted`) drop its entry at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select

from waystation.auth.deps import get_ctx
from waystation.auth.security import sha256_hex
from waystation.broker.acl import AclRule, device_rules, device_username, permits, station_tree_rules
from waystation.broker.credentials import OUTBOX_EVENT
from waystation.broker.models import DeviceCredential
from waystation.bus import Gap, Subscription, TypeFilter
from waystation.context import AppContext
from waystation.devices.models import Device
from waystation.errors import BadRequest, SignatureInvalid
from waystation.mqtt.topics import strip_share

log = logging.getLogger(__name__)

DEVICE_PREFIX = device_username("")  # every device account's username starts with this
MAX_CACHED_USERNAMES = 10_000
MAX_ANSWERS_PER_USERNAME = 16  # distinct (password, client id) pairs remembered for one username
MAX_PRESENCE_CLOCKS = 100_000
# Disconnects that do not end the device's session: a new connection took it over.
TAKEOVER_REASONS = frozenset({"takenover", "takeovered", "discarded"})
INVALIDATING_EVENTS = (OUTBOX_EVENT, "device.updated", "device.deleted")

Result = Literal["allow", "deny", "ignore"]
# Bus event for a refused login of one of our accounts (EMQX names the username; Mosquitto cannot).
LOGIN_REFUSED_EVENT = "broker.login_refused"


# --- what EMQX sends --------------------------------------------------------------------------------


class _EmqxBody(BaseModel):
    # EMQX fills the configured template; unknown placeholders and extra fields are ignored.
    model_config = ConfigDict(extra="ignore")


class AuthnRequest(_EmqxBody):
    username: str = ""
    password: str = ""
    clientid: str = ""
    peerhost: str = ""


class AuthzRequest(_EmqxBody):
    username: str = ""
    clientid: str = ""
    topic: str = ""
    action: str = ""


class ClientEvent(_EmqxBody):
    event: str = ""
    clientid: str = ""
    username: str | None = None
    timestamp: int | None = None  # epoch milliseconds, set by EMQX when the event happened
    reason: str | None = None


# --- accounts and the cache ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    password_hash: str  # sha256 hex of the password
    client_id: str | None  # None: any client id (the station's account)
    enabled: bool
    device_id: str | None = None
    station_id: str | None = None


@dataclass(slots=True)
class _Entry:
    account: Account | None
    expires: float
    answers: OrderedDict[tuple[str, str], Result] = field(default_factory=OrderedDict)

    def remember(self, key: tuple[str, str], result: Result) -> None:
        self.answers[key] = result
        if len(self.answers) > MAX_ANSWERS_PER_USERNAME:
            self.answers.popitem(last=False)


class EmqxHttpService:
    """Answers EMQX's authentication, authorization and event calls for one running station."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.ttl = ctx.settings.emqx_auth_cache_seconds
        self.lookups = 0  # database queries made (the cache keeps this low; tests and metrics read it)
        self.cache_hits = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._generation = 0  # bumped when every entry is dropped at once
        self._epochs: OrderedDict[str, int] = OrderedDict()  # bumped when one account changes
        self._presence_clock: OrderedDict[str, int] = OrderedDict()
        self._changes: Subscription = ctx.bus.subscribe(TypeFilter(INVALIDATING_EVENTS), maxsize=1000)

    def close(self) -> None:
        self._changes.close()

    # --- authentication ----------------------------------------------------------------------------

    async def authenticate(self, req: AuthnRequest) -> Result:
        if not self._ours(req.username):
            return "ignore"  # not an account of this station: EMQX asks its next authenticator
        entry = await self._entry(req.username)
        key = (sha256_hex(req.password), req.clientid)
        cached = entry.answers.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        result = _decide(entry.account, key[0], req.clientid)
        entry.remember(key, result)
        return result

    # --- authorization -----------------------------------------------------------------------------

    async def authorize(self, req: AuthzRequest) -> Literal["allow", "deny"]:
        if req.action not in ("publish", "subscribe") or not self._ours(req.username):
            return "deny"
        account = (await self._entry(req.username)).account
        if account is None or not account.enabled:
            return "deny"
        if account.client_id is not None and req.clientid != account.client_id:
            return "deny"
        topic = strip_share(req.topic)
        if not topic:
            return "deny"
        action: Literal["publish", "subscribe"] = "publish" if req.action == "publish" else "subscribe"
        for rule in self._rules(account):
            if permits(rule, topic, action):
                return "allow" if rule.allow else "deny"  # the first matching rule decides
        return "deny"

    def _rules(self, account: Account) -> tuple[AclRule, ...]:
        if account.device_id is not None and account.station_id is not None:
            return device_rules(account.station_id, account.device_id)
        flows = self.ctx.flows
        flow_topics = tuple(
            f.topic for f in (flows.flows.values() if flows is not None else ()) if f.server_id is None
        )
        # The device runtime subscribes to the whole device tree with one filter (devices/runtime.py).
        return station_tree_rules(flow_topics)

    # --- presence ------------------------------------------------------------------------------------

    async def client_event(self, event: ClientEvent) -> bool:
        """Drive device presence from `client.connected` / `client.disconnected`; True if it applied."""
        if event.event not in ("client.connected", "client.disconnected"):
            return False
        online = event.event == "client.connected"
        if not online and event.reason in TAKEOVER_REASONS:
            return False
        username = event.username or ""
        if not self._ours(username):
            return False
        account = (await self._entry(username)).account
        # Only device accounts have presence, and only with their own client id.
        if account is None or account.device_id is None or event.clientid != account.client_id:
            return False
        # Webhooks can arrive out of order: an older event never overrides a newer one.
        stamp = event.timestamp if event.timestamp is not None else int(time.time() * 1000)
        last = self._presence_clock.get(account.device_id)
        if last is not None and stamp < last:
            return False
        self._presence_clock[account.device_id] = stamp
        self._presence_clock.move_to_end(account.device_id)
        if len(self._presence_clock) > MAX_PRESENCE_CLOCKS:
            self._presence_clock.popitem(last=False)
        runtime = self.ctx.devices
        return runtime is not None and runtime.broker_presence(account.device_id, online)

    # --- the cache -----------------------------------------------------------------------------------

    def _ours(self, username: str) -> bool:
        if not username:
            return False
        return username.startswith(DEVICE_PREFIX) or username == self.ctx.settings.mqtt.username

    async def _entry(self, username: str) -> _Entry:
        self._apply_changes()
        now = time.monotonic()
        entry = self._entries.get(username)
        if entry is not None and entry.expires > now:
            self._entries.move_to_end(username)
            return entry
        pending = self._inflight.get(username)
        if pending is None:
            # Concurrent calls for one username share one query (a reconnect storm).
            pending = asyncio.ensure_future(self._load_and_cache(username, now))
            self._inflight[username] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(username, None))
        return await asyncio.shield(pending)

    async def _load_and_cache(self, username: str, now: float) -> _Entry:
        """Read the account and store it before the shared future resolves, so a call arriving just after
        the read finds the entry instead of starting another query."""
        generation = (self._generation, self._epochs.get(username, 0))
        entry = _Entry(await self._load(username), now + self.ttl)
        # Not if this account (or everything, after a reconcile) changed while we read it.
        if self.ttl > 0 and generation == (self._generation, self._epochs.get(username, 0)):
            self._entries[username] = entry
            if len(self._entries) > MAX_CACHED_USERNAMES:
                self._entries.popitem(last=False)
        return entry

    async def _load(self, username: str) -> Account | None:
        endpoint = self.ctx.settings.mqtt
        if username == endpoint.username:
            if not endpoint.password:
                return None
            return Account(username, sha256_hex(endpoint.password), None, True)
        self.lookups += 1
        async with self.ctx.db.session() as session:
            row = (
                await session.execute(
                    select(
                        DeviceCredential.password_hash,
                        DeviceCredential.client_id,
                        Device.id,
                        Device.station_id,
                        Device.enabled,
                    )
                    .join(Device, Device.id == DeviceCredential.device_id)
                    .where(DeviceCredential.username == username)
                )
            ).first()
        if row is None:
            return None
        password_hash, client_id, device_id, station_id, enabled = row
        return Account(username, password_hash, client_id, bool(enabled), device_id, station_id)

    def _apply_changes(self) -> None:
        """Drop the entries of accounts changed since the last call (events queued by the bus)."""
        while (item := self._changes.get_nowait()) is not None:
            if isinstance(item, Gap):  # missed some: forget everything
                self._forget_all()
                continue
            username = item.data.get("username")
            device_id = item.data.get("device_id")
            if item.type == OUTBOX_EVENT and not username and not device_id:
                self._forget_all()  # a reconcile: anything may have changed
                continue
            for name in {
                str(username) if username else None,
                device_username(str(device_id)) if device_id else None,
            }:
                if name is not None:
                    self._entries.pop(name, None)
                    self._epochs[name] = self._epochs.get(name, 0) + 1
                    self._epochs.move_to_end(name)
            while len(self._epochs) > MAX_CACHED_USERNAMES:
                self._epochs.popitem(last=False)

    def _forget_all(self) -> None:
        self._generation += 1
        self._entries.clear()


def _decide(account: Account | None, password_hash: str, clientid: str) -> Result:
    if account is None or not account.enabled:
        return "deny"
    # Always compare the hash (constant time), also when the client id is already wrong.
    password_ok = hmac.compare_digest(password_hash, account.password_hash)
    expected_client = account.client_id
    client_ok = expected_client is None or hmac.compare_digest(clientid.encode(), expected_client.encode())
    return "allow" if password_ok and client_ok else "deny"


# --- HTTP ---------------------------------------------------------------------------------------------

router = APIRouter(prefix="/api/internal/emqx", include_in_schema=False)


async def internal_caller(request: Request, ctx: AppContext = Depends(get_ctx)) -> AppContext:
    """A signed request, or the internal secret as a bearer token (EMQX sends fixed headers only)."""
    if "x-request-signature" not in request.headers:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if ctx.internal.bearer_matches(token.strip()):
                return ctx
            raise SignatureInvalid("The bearer secret does not match.")
    await ctx.internal.verify(request)
    return ctx


def service_of(request: Request, ctx: AppContext) -> EmqxHttpService:
    service: EmqxHttpService | None = getattr(request.app.state, "emqx_http", None)
    if service is None or service.ctx is not ctx:  # first call, or a new lifespan
        if service is not None:
            service.close()
        service = EmqxHttpService(ctx)
        request.app.state.emqx_http = service
    return service


async def _body(request: Request, model: type[_EmqxBody]) -> Any:
    try:
        return model.model_validate(orjson.loads(await request.body() or b"{}"))
    except (orjson.JSONDecodeError, ValidationError):
        raise BadRequest("The body must be the JSON object EMQX sends.") from None


@router.post("/authn")
async def authn(request: Request, ctx: AppContext = Depends(internal_caller)) -> dict[str, Any]:
    req: AuthnRequest = await _body(request, AuthnRequest)
    result = await service_of(request, ctx).authenticate(req)
    if result == "deny":  # BLE provisioning tells a device with wrong credentials by this (no secrets)
        ctx.bus.emit(LOGIN_REFUSED_EVENT, {"username": req.username, "client_id": req.clientid})
    return {"result": result, "is_superuser": False}


@router.post("/authz")
async def authz(request: Request, ctx: AppContext = Depends(internal_caller)) -> dict[str, Any]:
    req: AuthzRequest = await _body(request, AuthzRequest)
    return {"result": await service_of(request, ctx).authorize(req)}


@router.post("/events")
async def events(request: Request, ctx: AppContext = Depends(internal_caller)) -> dict[str, Any]:
    event: ClientEvent = await _body(request, ClientEvent)
    return {"applied": await service_of(request, ctx).client_event(event)}
