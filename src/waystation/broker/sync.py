"""Broker sync: makes the broker's accounts follow the database.

Changes reach the broker through the `broker_outbox` table (written in the same transaction as the
change, see credentials.py). `BrokerSync` applies pending rows in id order: it wakes on the
`broker.outbox` bus event after a commit, and polls for rows written by other processes (the CLI). An
`upsert_client` re-reads the database, so a row always applies the current state: a device that is gone
or disabled loses its account, whatever the row was written for.

While the broker is unreachable, API writes still succeed and rows queue; the worker retries with
exponential backoff and records attempts, the next attempt and the last error on the row. A full
reconcile (list the broker's accounts, remove the unknown ones, upsert every enabled device and the
station's own account) runs at start-up, after the broker comes back, periodically, and on demand
(a `reconcile` outbox row). Every pending row that was visible when a reconcile read the database is
settled by it.

`WAYSTATION_BROKER_ADMIN` picks the adapter (`make_adapter`): `mosquitto-dynsec` talks to Mosquitto's
dynamic security plugin, `password-file` writes the embedded broker's account files (Mosquitto without the
plugin, amqtt), `emqx` uses the EMQX REST API. `emqx-http` (EMQX asks the station about accounts) only
disconnects the clients of disabled, deleted or rotated devices, through that same REST API when it is
configured. With `none` there is nothing to push and rows are settled at once.

An `upsert_client` row written for a new password carries `{"rotated": true}`: the adapter is told to end
the sessions opened with the old password from the row itself, so a rotation queued before a restart
still does when it is applied (or covered by a reconcile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import delete, func, select, update

from waystation.broker.acl import (
    ADMIN_USERNAME,
    STATION_USERNAME,
    AclRule,
    BrokerAccount,
    device_rules,
    device_username,
    station_rules,
    station_tree_rules,
)
from waystation.broker.adapters.base import BrokerAdminAdapter, BrokerUnavailable
from waystation.broker.adapters.dynsec import DynsecAdapter, Login, ManagedDynsec, find_dynsec_plugin
from waystation.broker.adapters.files import AccountFiles, FilesAdapter
from waystation.broker.credentials import OUTBOX_EVENT, ROTATED
from waystation.broker.models import BrokerOutbox, DeviceCredential
from waystation.bus import Bus, Gap, Subscription, TypeFilter
from waystation.config import MqttEndpoint, Settings
from waystation.db import Database
from waystation.devices.models import Device
from waystation.errors import BrokerAdminMisconfigured
from waystation.flows import service as flows_service
from waystation.secrets_box import SecretBox

if TYPE_CHECKING:
    from waystation.broker.embedded import EmbeddedBroker

log = logging.getLogger(__name__)

NONE = "none"
DYNSEC = "mosquitto-dynsec"
FILES = "password-file"
EMQX = "emqx"
EMQX_HTTP = "emqx-http"
ADMIN_KEY_FILE = "broker-admin.key"
STATION_KEY_FILE = "broker-station.key"
DYNSEC_FILE = "dynamic-security.json"
ROW_BATCH = 100
RECENT_ITEMS = 50
DONE_RETENTION = timedelta(days=7)  # applied rows kept this long for inspection, then pruned


# --- what the station runs against ----------------------------------------------------------------


@dataclass
class BrokerPlan:
    """The resolved broker-admin setup of this start: the mode, the logins the station uses, and (for
    the embedded Mosquitto) the dynsec state file it manages."""

    mode: str
    station_login: Login | None = None  # the MqttLink's account; None: the MQTT URL's own credentials
    admin_login: Login | None = None
    managed: ManagedDynsec | None = None
    files: AccountFiles | None = None  # `password-file`: the embedded broker's account files
    manage_station: bool = False  # keep the station account's ACL (flows) in sync
    protected: frozenset[str] = field(default_factory=frozenset)
    # Said at start-up and shown by `GET /api/v1/broker/sync` (a gap in what the broker enforces).
    warnings: tuple[str, ...] = ()


def load_or_create_secret(path: Path) -> str:
    """A random secret kept in `path` (0600), created on first use, so it survives restarts."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


ANONYMOUS_WARNING = (
    "WAYSTATION_BROKER_ADMIN=none: the embedded broker accepts anonymous clients and does not enforce "
    "device accounts; anyone who reaches it can publish as any device and read every command"
)
NO_KICK_WARNING = (
    "WAYSTATION_BROKER_ADMIN=emqx-http without WAYSTATION_EMQX_API_URL, WAYSTATION_EMQX_API_KEY and "
    "WAYSTATION_EMQX_API_SECRET: a disabled, deleted or re-keyed device cannot log in again, but its live "
    "EMQX session is not disconnected"
)


def resolve_mode(settings: Settings, embedded: str | None, plugin: str | None) -> str:
    """`WAYSTATION_BROKER_ADMIN` made concrete. `embedded` is the embedded broker's kind (`mosquitto`,
    `amqtt`) or None for an external broker; `plugin` the dynsec plugin path, if installed."""
    configured = settings.broker_admin
    if configured == "auto":
        if embedded == "mosquitto" and plugin:
            return DYNSEC
        if embedded is not None:
            # Mosquitto without the plugin, or amqtt: accounts in files the station writes.
            return FILES
        return NONE
    if configured == FILES and embedded is None:
        raise BrokerAdminMisconfigured(
            "WAYSTATION_BROKER_ADMIN=password-file works with the embedded broker only (embedded://…): "
            "for an external Mosquitto use mosquitto-dynsec."
        )
    if configured == DYNSEC:
        if embedded == "amqtt":
            raise BrokerAdminMisconfigured(
                "WAYSTATION_BROKER_ADMIN=mosquitto-dynsec, but the embedded broker is amqtt: install "
                "mosquitto (apt-get install mosquitto) or set WAYSTATION_BROKER_ADMIN=none."
            )
        if embedded == "mosquitto" and not plugin:
            raise BrokerAdminMisconfigured(
                "WAYSTATION_BROKER_ADMIN=mosquitto-dynsec, but mosquitto_dynamic_security.so was not found: "
                "set WAYSTATION_BROKER_DYNSEC_PLUGIN to its path, or WAYSTATION_BROKER_ADMIN=none."
            )
        if embedded is None and not (settings.broker_admin_username and settings.broker_admin_password):
            raise BrokerAdminMisconfigured(
                "WAYSTATION_BROKER_ADMIN=mosquitto-dynsec with an external broker needs its dynsec admin "
                "account: set WAYSTATION_BROKER_ADMIN_USERNAME and WAYSTATION_BROKER_ADMIN_PASSWORD."
            )
    return configured


def expected_mode(settings: Settings) -> str:
    """The mode `waystation run` resolves with these settings (for CLI commands, which start no broker)."""
    from waystation.broker.embedded import embedded_kind

    embedded = embedded_kind(settings.embedded_broker) if settings.mqtt.embedded else None
    plugin = find_dynsec_plugin(settings.broker_dynsec_plugin) if embedded == "mosquitto" else None
    return resolve_mode(settings, embedded, plugin)


def plan_broker(settings: Settings, embedded: str | None) -> BrokerPlan:
    plugin = find_dynsec_plugin(settings.broker_dynsec_plugin) if embedded == "mosquitto" else None
    mode = resolve_mode(settings, embedded, plugin)
    endpoint = settings.mqtt
    protected = {STATION_USERNAME, ADMIN_USERNAME, *settings.broker_protected_usernames}
    if endpoint.username:
        protected.add(endpoint.username)
    url_login = (
        Login(endpoint.username, endpoint.password) if endpoint.username and endpoint.password else None
    )
    if mode == FILES:
        assert embedded in ("mosquitto", "amqtt")  # resolve_mode made sure
        station = Login(
            STATION_USERNAME, load_or_create_secret(settings.data_dir / "keys" / STATION_KEY_FILE)
        )
        files = AccountFiles(
            "mosquitto" if embedded == "mosquitto" else "amqtt",
            (settings.data_dir / "broker").resolve(),
            (station.username, station.password),
            station_account_rules((), FILES),
        )
        return BrokerPlan(FILES, station, files=files, manage_station=True, protected=frozenset(protected))
    if mode == EMQX:
        # The station creates and maintains its own EMQX user (not a superuser) with exactly its rules.
        return BrokerPlan(
            EMQX,
            station_login=url_login,
            manage_station=url_login is not None,
            protected=frozenset(protected),
        )
    if mode != DYNSEC:
        warnings: list[str] = []
        if mode == NONE and embedded is not None:
            warnings.append(ANONYMOUS_WARNING)
        if mode == EMQX_HTTP and not (
            settings.emqx_api_url or settings.emqx_api_key or settings.emqx_api_secret
        ):
            warnings.append(NO_KICK_WARNING)
        for warning in warnings:
            log.warning("%s (see docs/broker.md)", warning)
        return BrokerPlan(mode=mode, protected=frozenset(protected), warnings=tuple(warnings))
    if embedded is not None:
        assert plugin is not None  # resolve_mode made sure
        keys = settings.data_dir / "keys"
        admin = Login(ADMIN_USERNAME, load_or_create_secret(keys / ADMIN_KEY_FILE))
        station = Login(STATION_USERNAME, load_or_create_secret(keys / STATION_KEY_FILE))
        managed = ManagedDynsec(
            plugin=plugin,
            config_file=(settings.data_dir / "broker" / DYNSEC_FILE).resolve(),
            admin=admin,
            station=station,
            station_rules=station_account_rules((), DYNSEC),
        )
        return BrokerPlan(
            DYNSEC, station, admin, managed, manage_station=True, protected=frozenset(protected)
        )
    # An external Mosquitto: the station keeps using the MQTT URL's account, whose ACL it maintains unless
    # it is the admin account itself (replacing the admin's roles would lock the station out).
    admin = Login(settings.broker_admin_username or "", settings.broker_admin_password or "")
    station_login = url_login
    protected.add(admin.username)
    return BrokerPlan(
        DYNSEC,
        station_login=station_login,
        admin_login=admin,
        manage_station=station_login is not None and station_login.username != admin.username,
        protected=frozenset(protected),
    )


async def prepare_broker(settings: Settings, db: Database, broker: EmbeddedBroker | None) -> BrokerPlan:
    """Resolve the plan and, for a managed Mosquitto, hand the broker its dynsec setup, with the station
    account's ACL already covering the enabled flows (so their subscriptions work from the first
    connect)."""
    plan = plan_broker(settings, broker.kind if broker is not None else None)
    if plan.managed is not None and broker is not None:
        plan.managed.station_rules = station_account_rules(await station_flow_topics(db), DYNSEC)
        broker.dynsec = plan.managed
    if plan.files is not None and broker is not None:
        plan.files.station_rules = station_account_rules(await station_flow_topics(db), FILES)
        plan.files.reload = broker.reload
        broker.files = plan.files
    return plan


def admin_endpoint(endpoint: MqttEndpoint) -> MqttEndpoint:
    """Where the admin connection goes: a wildcard listen address is reached on loopback."""
    if endpoint.host in {"0.0.0.0", "::", ""}:
        return MqttEndpoint(False, "127.0.0.1", endpoint.port, endpoint.tls)
    return MqttEndpoint(False, endpoint.host, endpoint.port, endpoint.tls)


def make_adapter(settings: Settings, plan: BrokerPlan) -> BrokerAdminAdapter | None:
    """The adapter for the plan's mode, or None when there is nothing to push to the broker."""
    if plan.mode == DYNSEC:
        assert plan.admin_login is not None
        station = plan.station_login.username if plan.station_login and plan.manage_station else None
        return DynsecAdapter(
            admin_endpoint(settings.mqtt), plan.admin_login, subscribe_any={station} if station else ()
        )
    if plan.mode == EMQX:
        try:
            from waystation.broker.adapters.emqx import EmqxAdapter
        except ImportError as exc:
            raise BrokerAdminMisconfigured(
                "WAYSTATION_BROKER_ADMIN=emqx, but this build has no EMQX adapter."
            ) from exc
        try:
            return EmqxAdapter.from_settings(settings)
        except ValueError as exc:
            raise BrokerAdminMisconfigured(str(exc)) from exc
    if plan.mode == FILES:
        assert plan.files is not None
        return FilesAdapter(plan.files)
    if plan.mode == EMQX_HTTP and (
        settings.emqx_api_url or settings.emqx_api_key or settings.emqx_api_secret
    ):
        # EMQX asks the station on every login and subscription (broker/emqx_http.py), so the database
        # already is the truth; the management API is used only to end the live sessions of devices
        # that lost their access. Without it (a warning at start-up) those sessions stay.
        from waystation.broker.adapters.emqx import EmqxSessionKicker

        try:
            return EmqxSessionKicker.from_settings(settings)
        except ValueError as exc:
            raise BrokerAdminMisconfigured(str(exc)) from exc
    # `none`: nobody enforces accounts.
    return None


# --- what the broker must hold ---------------------------------------------------------------------


def station_account_rules(flow_topics: tuple[str, ...], mode: str) -> tuple[AclRule, ...]:
    """The station's own account. Mosquitto's dynsec checks every delivery, so the station may subscribe
    to any filter (`subscribe_any`) and receives only the device topics it reads; EMQX and the account
    files grant the one filter the device runtime subscribes with, `station/#`."""
    if mode == DYNSEC:
        return station_rules(flow_topics)
    return station_tree_rules(flow_topics)


async def station_flow_topics(db: Database) -> tuple[str, ...]:
    """Topic filters of enabled flows that read from the station's own broker."""
    async with db.session() as session:
        flows = await flows_service.list_flows(session)
        return tuple(sorted({f.topic for f in flows if f.enabled and f.mqtt_server_id is None}))


@dataclass
class ReconcileResult:
    created: int = 0
    updated: int = 0
    removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "removed": self.removed}


def backoff(attempt: int, base: float, cap: float) -> float:
    return float(min(base * (2 ** max(0, attempt - 1)), cap))


class BrokerSync:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        box: SecretBox,
        plan: BrokerPlan,
        adapter: BrokerAdminAdapter | None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.box = box
        self.plan = plan
        self.adapter = adapter
        self.mode = plan.mode
        self._wake = asyncio.Event()
        self._need_reconcile = True
        self._station_dirty = plan.manage_station
        self._failures = 0
        self._retry_at = 0.0
        self._last_reconcile_mono = 0.0
        self._last_prune = float("-inf")  # prune on the first successful pass
        self.broker_ok: bool | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_reconcile_at: datetime | None = None
        self.last_reconcile: dict[str, int] | None = None
        self.applied = 0
        # Whether disabling, deleting or re-keying a device ends its live broker session.
        self.disconnects_clients = adapter is not None
        if isinstance(adapter, DynsecAdapter):
            adapter.on_connection_lost = self._connection_lost
        self._gauges: dict[str, Any] = {}
        if registry is not None:
            self._gauges = {
                "backlog": Gauge(
                    "waystation_broker_sync_backlog", "Broker outbox rows not applied yet", registry=registry
                ),
                "oldest": Gauge(
                    "waystation_broker_sync_oldest_pending_seconds",
                    "Age of the oldest outbox row not applied yet (0 when none)",
                    registry=registry,
                ),
                "up": Gauge(
                    "waystation_broker_sync_broker_up",
                    "1 when the last broker-admin call succeeded",
                    registry=registry,
                ),
                "failures": Counter(
                    "waystation_broker_sync_failures_total", "Failed broker-admin attempts", registry=registry
                ),
                "reconciled": Gauge(
                    "waystation_broker_sync_last_reconcile_timestamp_seconds",
                    "When the last full reconcile finished (Unix time)",
                    registry=registry,
                ),
            }

    # --- control ----------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def request_reconcile(self) -> None:
        """Reconcile at the next step (not durable; the API writes a `reconcile` outbox row instead)."""
        self._need_reconcile = True
        self._wake.set()

    def _connection_lost(self) -> None:
        if self.broker_ok is not False:
            self._announce(False)
        self.broker_ok = False
        self._need_reconcile = True
        self._wake.set()

    async def close(self) -> None:
        if self.adapter is not None:
            await self.adapter.close()

    async def prepare(self, within: float = 5.0) -> None:
        """External broker: create or fix the station's own account before the station's link connects,
        so its subscriptions are allowed from the first connect. Best effort: if the broker does not
        answer, the start-up reconcile does it once it does. (A managed Mosquitto has the account in the
        state file it starts with.)"""
        if self.adapter is None or self.plan.managed is not None:
            return
        try:
            account = await self._station_account()
            if account is not None:
                await asyncio.wait_for(self.adapter.upsert_account(account), within)
        except (BrokerUnavailable, TimeoutError) as exc:
            log.warning(
                "broker sync: could not prepare the station's broker account yet: %s", exc or "timeout"
            )

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        sub = self.bus.subscribe(TypeFilter([OUTBOX_EVENT, "flow.changed"]), maxsize=1000)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._listen(sub))
                tasks.create_task(self._loop())
        finally:
            sub.close()

    async def _listen(self, sub: Subscription) -> None:
        async for item in sub:
            if isinstance(item, Gap) or item.type == "flow.changed":
                self._station_dirty = self.plan.manage_station
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.step()
                await self._update_gauges()
            except Exception as exc:  # the database may be briefly unavailable; never die over it
                log.exception("broker sync step failed")
                self._note_error(f"broker sync step failed ({type(exc).__name__})")
                self._need_reconcile = True
                self._retry_at = time.monotonic() + self.settings.broker_sync_backoff_max_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_for())

    @property
    def reconciles(self) -> bool:
        """Whether there are accounts on the broker to compare with the database."""
        return self.adapter is not None and self.adapter.manages_accounts

    def _sleep_for(self) -> float:
        now = time.monotonic()
        if self._retry_at > now:
            return self._retry_at - now  # backing off: nothing to do before then
        delay = self.settings.broker_sync_poll_seconds
        interval = self.settings.broker_reconcile_interval_seconds
        if interval > 0 and self.reconciles:
            delay = min(delay, max(0.0, self._last_reconcile_mono + interval - now))
        return max(delay, 0.01)

    async def step(self) -> None:
        """One pass: reconcile if due, sync the station account if flows changed, apply due rows."""
        if self.adapter is None:
            await self._settle_without_broker()
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            interval = self.settings.broker_reconcile_interval_seconds
            periodic = interval > 0 and now - self._last_reconcile_mono >= interval
            if not self.reconciles:
                self._need_reconcile = False
            elif self._need_reconcile or periodic:
                await self.reconcile()
            elif self._station_dirty:
                self._station_dirty = False
                account = await self._station_account()
                if account is not None:
                    await self.adapter.upsert_account(account)
            await self._apply_due_rows()
        except BrokerUnavailable as exc:
            self._broker_failed(exc)
            return
        if self.broker_ok is False:
            log.info("broker sync: the broker answers again")
        if self.broker_ok is not True:
            self._announce(True)
        self.broker_ok = True
        self._failures = 0
        if self._gauges:
            self._gauges["up"].set(1)
        if now - self._last_prune > 3600:
            self._last_prune = now
            await self._prune()

    def _broker_failed(self, exc: BrokerUnavailable) -> None:
        self._failures += 1
        delay = backoff(
            self._failures,
            self.settings.broker_sync_backoff_base_seconds,
            self.settings.broker_sync_backoff_max_seconds,
        )
        self._retry_at = time.monotonic() + delay
        # Whatever happened to the broker meanwhile (restart, lost state), compare everything once back.
        self._need_reconcile = True
        if self.broker_ok is not False:
            log.warning("broker sync: %s; retrying with backoff, changes queue meanwhile", exc)
            self._announce(False)
        else:
            log.debug("broker sync still failing: %s (next try in %.1fs)", exc, delay)
        self.broker_ok = False
        self._note_error(str(exc))
        if self._gauges:
            self._gauges["up"].set(0)
            self._gauges["failures"].inc()

    def _announce(self, broker_ok: bool) -> None:
        """`broker.sync_changed` (PROTOCOLS §5) when the broker becomes reachable or unreachable and after
        a reconcile; details (backlog, errors) are in `GET /api/v1/broker/sync`."""
        data: dict[str, Any] = {"mode": self.mode, "broker_ok": broker_ok}
        if self.last_reconcile is not None:
            data["last_reconcile"] = self.last_reconcile
        self.bus.emit("broker.sync_changed", data)

    def _note_error(self, message: str) -> None:
        self.last_error = message[:500]
        self.last_error_at = datetime.now(UTC)

    # --- outbox rows ------------------------------------------------------------------------------

    async def _apply_due_rows(self) -> None:
        assert self.adapter is not None
        while True:
            now = datetime.now(UTC)
            async with self.db.session() as session:
                rows = (
                    await session.scalars(
                        select(BrokerOutbox)
                        .where(BrokerOutbox.done_at.is_(None), BrokerOutbox.next_attempt_at <= now)
                        .order_by(BrokerOutbox.id)
                        .limit(ROW_BATCH)
                    )
                ).all()
            if not rows:
                return
            for row in rows:
                try:
                    await self._apply(row)
                except BrokerUnavailable as exc:
                    await self._row_failed(row, str(exc))
                    raise
                except ValueError as exc:
                    # Not the broker's fault (a sealed password this station's key cannot open): the row
                    # waits with backoff, the others go on.
                    log.warning("broker outbox row %d (%s %s) failed: %s", row.id, row.op, row.username, exc)
                    await self._row_failed(row, str(exc))
                    self._note_error(str(exc))
                else:
                    await self._row_done([row.id])
            if len(rows) < ROW_BATCH:
                return

    async def _apply(self, row: BrokerOutbox) -> None:
        assert self.adapter is not None
        username = row.username or (device_username(row.device_id) if row.device_id else None)
        if row.op == "reconcile":
            if self.reconciles:
                await self.reconcile(upto=row.id)
            return
        if username is None:
            raise ValueError("outbox row names no account")
        if row.op == "upsert_client" and row.device_id is not None:
            account = await self._device_account(row.device_id)
            if account is None:
                await self.adapter.delete_account(username)
            else:
                await self.adapter.upsert_account(account, disconnect=_rotated(row.data))
        elif row.op == "delete_client":
            await self.adapter.delete_account(username)
        else:
            raise ValueError(f"unknown outbox operation {row.op!r}")
        self.applied += 1

    async def _row_done(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self.db.session() as session:
            await session.execute(
                update(BrokerOutbox)
                .where(BrokerOutbox.id.in_(ids), BrokerOutbox.done_at.is_(None))
                .values(done_at=datetime.now(UTC))
            )

    async def _row_failed(self, row: BrokerOutbox, error: str) -> None:
        attempts = row.attempts + 1
        delay = backoff(
            attempts,
            self.settings.broker_sync_backoff_base_seconds,
            self.settings.broker_sync_backoff_max_seconds,
        )
        async with self.db.session() as session:
            await session.execute(
                update(BrokerOutbox)
                .where(BrokerOutbox.id == row.id)
                .values(
                    attempts=attempts,
                    last_error=error[:500],
                    next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
                )
            )

    async def _settle_without_broker(self) -> None:
        """No adapter: nothing will ever apply the rows, so settle them instead of letting them pile up.
        Switching to a broker-admin mode later starts with a full reconcile anyway."""
        async with self.db.session() as session:
            await session.execute(
                update(BrokerOutbox).where(BrokerOutbox.done_at.is_(None)).values(done_at=datetime.now(UTC))
            )

    async def _prune(self) -> None:
        async with self.db.session() as session:
            await session.execute(
                delete(BrokerOutbox).where(BrokerOutbox.done_at < datetime.now(UTC) - DONE_RETENTION)
            )

    # --- the desired state ------------------------------------------------------------------------

    async def _device_account(self, device_id: str) -> BrokerAccount | None:
        """The device's account as the database wants it now; None when it must not have one."""
        async with self.db.session() as session:
            found = (
                await session.execute(
                    select(DeviceCredential, Device.station_id, Device.enabled)
                    .join(Device, Device.id == DeviceCredential.device_id)
                    .where(DeviceCredential.device_id == device_id)
                )
            ).first()
        if found is None:
            return None
        cred, station_id, enabled = found
        if not enabled:
            return None
        return self._account(cred, station_id)

    def _account(self, cred: DeviceCredential, station_id: str) -> BrokerAccount:
        return BrokerAccount(
            username=cred.username,
            password=self.box.open(cred.password_sealed),
            client_id=cred.client_id,
            rules=device_rules(station_id, cred.device_id),
            device_id=cred.device_id,
        )

    async def _station_account(self) -> BrokerAccount | None:
        login = self.plan.station_login
        if not self.plan.manage_station or login is None:
            return None
        rules = station_account_rules(await station_flow_topics(self.db), self.mode)
        return BrokerAccount(username=login.username, password=login.password, client_id=None, rules=rules)

    async def reconcile(self, upto: int | None = None) -> ReconcileResult:
        """Make the broker hold exactly the accounts the database wants. Settles the pending rows that
        were visible before the database was read (all of them up to `upto` when given)."""
        assert self.adapter is not None
        started = datetime.now(UTC)
        # Cleared before reading, so a change that arrives meanwhile asks again (a failure sets them back).
        self._need_reconcile = False
        self._station_dirty = False
        async with self.db.session() as session:
            query = select(BrokerOutbox.id, BrokerOutbox.username, BrokerOutbox.data).where(
                BrokerOutbox.done_at.is_(None)
            )
            if upto is not None:
                query = query.where(BrokerOutbox.id <= upto)
            pending = (await session.execute(query)).all()
            covered = [row_id for row_id, _, _ in pending]
            # Rotations this reconcile settles: their old sessions must end as if the rows were applied.
            rotated = {name for _, name, data in pending if name and _rotated(data)}
            creds = (
                await session.execute(
                    select(DeviceCredential, Device.station_id, Device.enabled).join(
                        Device, Device.id == DeviceCredential.device_id
                    )
                )
            ).all()
        desired: dict[str, BrokerAccount] = {}
        known: set[str] = set()
        for cred, station_id, enabled in creds:
            if not enabled:
                continue
            known.add(cred.username)
            try:
                desired[cred.username] = self._account(cred, station_id)
            except ValueError as exc:
                # Left as it is on the broker: removing it would cut off a device we cannot re-create.
                log.warning("broker reconcile: skipping %s: %s", cred.username, exc)
                self._note_error(f"{cred.username}: {exc}")
        station = await self._station_account()
        if station is not None:
            desired[station.username] = station
        if isinstance(self.adapter, DynsecAdapter):
            await self.adapter.ensure_default_deny()
        present = await self.adapter.list_usernames()
        result = ReconcileResult()
        batch = self.adapter.batch() if isinstance(self.adapter, FilesAdapter) else contextlib.nullcontext()
        async with batch:
            removed = sorted(present - known - desired.keys() - self.plan.protected)
            for username in removed:
                await self.adapter.delete_account(username)
                result.removed += 1
            # A covered row that takes access away from an account the broker no longer lists (an earlier
            # attempt removed it, then failed before disconnecting its clients): delete it again, which
            # also disconnects (idempotent, not counted).
            settled = {name for _, name, _ in pending if name} - desired.keys() - set(removed)
            for username in sorted(settled - known - self.plan.protected):
                await self.adapter.delete_account(username)
            for account in desired.values():
                changed = await self.adapter.upsert_account(account, disconnect=account.username in rotated)
                if account.username not in present:
                    result.created += 1
                elif changed is not False:  # adapters that cannot tell count as updated
                    result.updated += 1
        await self._row_done(covered)
        self._last_reconcile_mono = time.monotonic()
        self.last_reconcile_at = started
        self.last_reconcile = result.as_dict()
        self._announce(True)
        if self._gauges:
            self._gauges["reconciled"].set(started.timestamp())
        if result.created or result.updated or result.removed:
            log.info("broker reconcile: %s", result.as_dict())
        return result

    # --- status -----------------------------------------------------------------------------------

    async def _backlog(self) -> tuple[int, datetime | None]:
        async with self.db.session() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(BrokerOutbox.id), func.min(BrokerOutbox.created_at)).where(
                        BrokerOutbox.done_at.is_(None)
                    )
                )
            ).one()
        if oldest is not None and oldest.tzinfo is None:  # SQLite aggregates lose the column type
            oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=UTC)
        return int(count), oldest

    async def _update_gauges(self) -> None:
        if not self._gauges:
            return
        count, oldest = await self._backlog()
        self._gauges["backlog"].set(count)
        self._gauges["oldest"].set((datetime.now(UTC) - oldest).total_seconds() if oldest else 0)

    async def status(self, limit: int = RECENT_ITEMS) -> dict[str, Any]:
        count, oldest = await self._backlog()
        async with self.db.session() as session:
            rows = (
                await session.scalars(
                    select(BrokerOutbox)
                    .where(BrokerOutbox.done_at.is_(None))
                    .order_by(BrokerOutbox.id.desc())
                    .limit(limit)
                )
            ).all()
        return {
            "mode": self.mode,
            "disconnects_clients": self.disconnects_clients,
            "warnings": list(self.plan.warnings),
            "broker_reachable": self.broker_ok,
            "backlog": count,
            "oldest_pending_at": oldest,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_reconcile_at": self.last_reconcile_at,
            "last_reconcile": self.last_reconcile,
            "items": [
                {
                    "id": r.id,
                    "op": r.op,
                    "username": r.username,
                    "device_id": r.device_id,
                    "created_at": r.created_at,
                    "attempts": r.attempts,
                    "next_attempt_at": r.next_attempt_at,
                    "last_error": r.last_error,
                }
                for r in rows
            ],
        }


def _rotated(data: dict[str, Any] | None) -> bool:
    """Whether an outbox row was written for a new password (`credentials.issue_credentials`)."""
    return isinstance(data, dict) and data.get(ROTATED) is True
