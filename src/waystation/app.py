"""`create_app(settings)`: the FastAPI app whose lifespan starts and stops every station service.

Start order: migrate → bootstrap rows (default station, device types, first-run setup) → embedded
broker (if any) → MQTT link → device runtime → background services. Each background service runs
under a supervisor that logs and restarts it, so one failing service never takes the station down.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

from fastapi import APIRouter, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from waystation import __version__
from waystation.audit.router import router as audit_router
from waystation.auth import service as auth_service
from waystation.auth.internal import InternalVerifier, load_or_create_internal_secret
from waystation.auth.keys import KeyRing
from waystation.auth.router import router as auth_router
from waystation.auth.tokens import TokenSigner
from waystation.auth.tokens_router import router as tokens_router
from waystation.broker.embedded import EmbeddedBroker
from waystation.broker.emqx_http import router as emqx_http_router
from waystation.broker.router import router as broker_router
from waystation.broker.sync import BrokerSync, make_adapter, prepare_broker
from waystation.bus import Bus
from waystation.cloud.link import CloudLink
from waystation.cloud.router import router as cloud_router
from waystation.cluster.locks import BOOTSTRAP_LOCK, serialized
from waystation.cluster.router import router as cluster_router
from waystation.cluster.service import Cluster, periodically
from waystation.config import Settings
from waystation.context import AppContext
from waystation.controller import service as controller_service
from waystation.controller.hub import ControllerHub
from waystation.controller.router import router as controllers_router
from waystation.controller.router import ws_router as controller_ws_router
from waystation.dashboards.router import router as dashboards_router
from waystation.db import Database, migrate
from waystation.devices.router import router as devices_router
from waystation.devices.runtime import DeviceRuntime
from waystation.devices.types import seed_device_types
from waystation.errors import install_error_handlers
from waystation.flows import service as flows_service
from waystation.flows.registry import FlowRegistry
from waystation.flows.router import router as flows_router
from waystation.mcp.router import router as mcp_router
from waystation.mcp.server import McpEndpoint
from waystation.mqtt.link import MqttLink
from waystation.oplog.retention import LogRetentionJob
from waystation.oplog.router import router as oplog_router
from waystation.ota.driver import OtaDriver
from waystation.ota.router import router as ota_router
from waystation.ota.upload import firmware_body_limits
from waystation.provisioning.ble.manager import ble_manager
from waystation.provisioning.ble.router import router as ble_provisioning_router
from waystation.provisioning.ble.router import ws_router as provisioning_ws_router
from waystation.provisioning.router import router as provisioning_router
from waystation.realtime.router import router as realtime_router
from waystation.rules.router import router as rules_router
from waystation.rules.runtime import RuleEngine
from waystation.secrets_box import SecretBox
from waystation.security.bodylimit import BodySizeLimitMiddleware
from waystation.security.ratelimit import RateLimiter
from waystation.snapshots.router import router as snapshots_router
from waystation.snapshots.router import snapshot_body_limits
from waystation.snapshots.schedule import SnapshotScheduler
from waystation.station import service as station_service
from waystation.station.router import router as station_router
from waystation.status.metrics import Metrics
from waystation.status.router import probes as status_probes
from waystation.status.router import router as status_router
from waystation.status.sampler import StatusSampler
from waystation.telemetry.ingest import IngestPipeline
from waystation.telemetry.retention import RetentionJob
from waystation.telemetry.router import router as telemetry_router
from waystation.telemetry.router import ws_router as telemetry_ws_router
from waystation.web.spa import install_web
from waystation.webhooks.delivery import DeliveryDispatcher
from waystation.webhooks.fanout import WebhookFanout
from waystation.webhooks.router import router as webhooks_router

log = logging.getLogger(__name__)

Announce = Callable[[str], None]


@dataclass
class AppOptions:
    demo: bool = False
    announce: Announce = print  # first-run secrets go to the console only, never to log files


async def supervise(name: str, factory: Callable[[], Awaitable[None]], max_delay: float = 30.0) -> None:
    """Run a long-lived service; if it crashes, log it and start it again with backoff."""
    delay = 1.0
    while True:
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service %s crashed; restarting in %.0fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


async def bootstrap(ctx: AppContext, options: AppOptions) -> None:
    """Rows every station needs, and the first-run way in."""
    async with ctx.db.session() as session:
        station = await station_service.ensure_default_station(session)
        ctx.default_station_id = station.id
        await seed_device_types(session)
        await station_service.backfill_memberships(session, station.id)
        if sealed := await controller_service.seal_legacy_configs(session, ctx.box):
            log.info("sealed %d plugin configs stored in clear by an earlier version", sealed)
        if await auth_service.setup_needed(session):
            if options.demo:
                password = secrets.token_urlsafe(12)
                await auth_service.create_user(session, "admin", password, "owner")
                options.announce(
                    f"Demo owner account created: username 'admin', password '{password}' (shown once)."
                )
            else:
                token = await auth_service.ensure_setup_token(session)
                options.announce(
                    f"No users yet. Create the owner account (link works once): "
                    f"{ctx.settings.base_url}/setup?token={token}"
                )


async def use_default_mqtt_server(ctx: AppContext) -> None:
    """Without `WAYSTATION_MQTT_URL`, an enabled MQTT server marked default (`/api/v1/mqtt-servers`) is the
    station broker instead of the embedded one (takes effect at start-up)."""
    if ctx.settings.mqtt_url_configured:
        return
    async with ctx.db.session() as session:
        endpoint = await flows_service.default_station_broker(session, ctx.box)
    if endpoint is not None:
        ctx.settings.mqtt_url = endpoint.url()
        log.info("station broker: the default MQTT server %s", endpoint.display())


async def rules_on_leader(ctx: AppContext) -> None:
    """The rule engine while this worker leads: a fresh bus subscription, dropped when leadership ends
    (a follower must not pile up readings it will never evaluate)."""
    assert ctx.rules is not None
    try:
        await ctx.rules.reload()
        await ctx.rules.run()
    finally:
        ctx.rules.detach()


def create_app(settings: Settings, options: AppOptions | None = None) -> FastAPI:
    options = options or AppOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_data_dir()
        await migrate(settings)
        bus = Bus(ring_size=settings.sse_ring_size)
        db = Database(settings, bus)
        signer = TokenSigner(lifetime=timedelta(minutes=settings.access_token_minutes))
        ctx = AppContext(
            settings=settings,
            db=db,
            bus=bus,
            signer=signer,
            box=SecretBox(settings.data_dir),
            internal=InternalVerifier(
                load_or_create_internal_secret(settings.data_dir, settings.internal_secret), db
            ),
        )
        metrics: Metrics = app.state.metrics
        app.state.ctx = ctx
        tasks: list[asyncio.Task[None]] = []

        def service(name: str, factory: Callable[[], Awaitable[None]], singleton: bool = False) -> None:
            """Start a supervised service; a singleton runs on the leader only when there are workers."""
            if singleton and ctx.cluster is not None:
                ctx.cluster.singleton(name, lambda: supervise(name, factory))
            else:
                tasks.append(asyncio.create_task(supervise(name, factory), name=name))

        try:
            ctx.keys = KeyRing(settings, db, ctx.box, signer)
            await ctx.keys.load()
            tasks.append(asyncio.create_task(supervise("signing-keys", ctx.keys.run), name="signing-keys"))
            async with serialized(settings, BOOTSTRAP_LOCK, "waystation-bootstrap"):  # workers: one at a time
                await bootstrap(ctx, options)
            await use_default_mqtt_server(ctx)
            endpoint = settings.mqtt
            # On PostgreSQL with an external broker this process is one of several possible workers.
            ctx.cluster = cluster = await Cluster.join(settings, db, bus)
            if endpoint.embedded:
                ctx.broker = EmbeddedBroker(
                    endpoint.host, endpoint.port, settings.data_dir, prefer=settings.embedded_broker
                )
            # Who manages broker accounts (WAYSTATION_BROKER_ADMIN) and which account the station logs in
            # with; a managed Mosquitto gets its dynamic-security setup before it starts.
            plan = await prepare_broker(settings, db, ctx.broker)
            ctx.broker_sync = BrokerSync(
                settings, db, bus, ctx.box, plan, make_adapter(settings, plan), metrics.registry
            )
            if ctx.broker is not None:
                await ctx.broker.start()
                tasks.append(asyncio.create_task(ctx.broker.run(), name="embedded-broker"))
            await ctx.broker_sync.prepare()
            # A stable client id and a persistent session: QoS 1 messages that arrive while the station
            # is down (or not yet acknowledged when it died) are delivered when it comes back.
            client_id = settings.mqtt_client_id or f"waystation-{ctx.default_station_id}"
            link = MqttLink(
                endpoint,
                client_id=cluster.client_id(client_id) if cluster else client_id,
                shared_group=cluster.share_group(ctx.default_station_id) if cluster else None,
                fast_reconnect=cluster is not None,  # the shared-subscription gap after a broker restart
                persistent_session=True,
                manual_ack=True,
                protocol=3 if ctx.broker is not None and ctx.broker.kind == "amqtt" else 5,
                session_expiry=settings.mqtt_session_expiry_seconds,
                username=plan.station_login.username if plan.station_login else None,
                password=plan.station_login.password if plan.station_login else None,
            )
            ctx.mqtt = link
            ctx.ingest = IngestPipeline(settings, db, bus, metrics, pause=link.pause, resume=link.resume)
            await ctx.ingest.load()
            ctx.devices = DeviceRuntime(settings, db, bus, metrics)
            ctx.devices.ingest = ctx.ingest
            await ctx.devices.load()
            ctx.devices.attach(link)
            if cluster is not None:
                ctx.devices.share(lambda: cluster.is_leader)
                cluster.adopt_sessions(link)
            ctx.deliveries = DeliveryDispatcher(settings, db, bus, ctx.box)
            tasks.append(asyncio.create_task(supervise("deliveries", ctx.deliveries.run), name="deliveries"))
            # Webhooks subscribe to the bus before the MQTT link and the services that emit events start.
            ctx.webhooks = WebhookFanout(settings, db, bus, ctx.deliveries, metrics.registry)
            await ctx.webhooks.load()
            tasks.append(asyncio.create_task(supervise("webhooks", ctx.webhooks.run), name="webhooks"))
            # The rule engine subscribes before readings flow too; it fires through the device runtime
            # (commands) and the bus (`rule.fired`, which the webhook fan-out picks up).
            ctx.rules = RuleEngine(settings, db, bus, ctx.devices, ctx.webhooks, metrics.registry)
            if cluster is None:
                await ctx.rules.load()
                service("rules", ctx.rules.run)
            else:  # the leader's: it gets every worker's readings (cluster/bridge.py)
                await ctx.rules.reload()
                cluster.singleton("rules", lambda: supervise("rules", lambda: rules_on_leader(ctx)))
            # The OTA driver subscribes before the link starts too: acks and handshakes drive rollouts.
            ctx.ota = OtaDriver(settings, db, bus, ctx.devices, ctx.internal.secret)
            link.start()
            service("ota", ctx.ota.run, singleton=True)
            # The cloud link idles until it is enabled (POST /api/v1/cloud/claim) and has a URL.
            ctx.cloud = CloudLink(settings, db, bus, ctx.box, ctx.devices, ctx.default_station_id)
            service("cloud", ctx.cloud.run, singleton=True)
            if ctx.cluster is not None:
                service("cloud-follower", ctx.cloud.follow_leader)
            devices, ingest = ctx.devices, ctx.ingest
            tasks.append(asyncio.create_task(supervise("ingest", ingest.run), name="ingest"))
            tasks.append(asyncio.create_task(supervise("devices", devices.run), name="devices"))
            ctx.controllers = ControllerHub(settings.controller_write_timeout_seconds)
            ctx.flows = FlowRegistry(settings, db, bus, link, ingest, ctx.deliveries, ctx.box)
            if cluster is not None:
                ctx.flows.client_suffix = f"-{cluster.worker}"
                ctx.flows.shared_group = cluster.share_group(ctx.default_station_id)
            tasks.append(asyncio.create_task(supervise("flows", ctx.flows.run), name="flows"))
            ctx.deliveries.outcomes = metrics.deliveries
            ctx.status_sampler = StatusSampler(ctx, metrics, metrics.registry)
            tasks.append(asyncio.create_task(supervise("status", ctx.status_sampler.run), name="status"))
            ctx.retention = RetentionJob(settings, db)
            service("retention", ctx.retention.run, singleton=True)
            log_retention = LogRetentionJob(settings, db)
            service("log-retention", log_retention.run, singleton=True)
            ctx.snapshots = SnapshotScheduler(settings, db, ctx.box)
            service("snapshots", ctx.snapshots.run, singleton=True)
            service("broker-sync", ctx.broker_sync.run, singleton=True)
            # BLE provisioning (off unless enabled or simulated): the bridge child and its scans.
            if (ble := ble_manager(ctx)) is not None:
                ctx.provisioning_manager = ble
                service("ble-provisioning", ble.run, singleton=True)
            if options.demo:
                from waystation.simulator.demo import run_demo_fleet

                tasks.append(
                    asyncio.create_task(
                        supervise("demo-fleet", lambda: run_demo_fleet(ctx)), name="demo-fleet"
                    )
                )
            if cluster is not None:
                # Every worker follows the others' device statuses and webhook changes; then the slot,
                # the bus bridge and the leadership (with the singletons above) start.
                cluster.everywhere("device-follow", ctx.devices.follow_others)
                cluster.everywhere("webhook-reload", periodically(5.0, ctx.webhooks.load))
                tasks.append(asyncio.create_task(cluster.run(), name="cluster"))
            # Everything allocated so far (modules, settings, caches) lives for the whole run: move it out
            # of the collector's reach, so full collections stay short on the ingest hot path (measured:
            # full collections of the start-up heap took up to 410 ms each and set the p99 latency).
            gc.collect()
            gc.freeze()
            log.info(
                "Waystation %s ready: http://%s:%d  (API docs at /api/docs, MQTT %s)",
                __version__,
                settings.http_host,
                settings.http_port,
                endpoint.display(),
            )
            async with mcp.running():  # the MCP SDK's session manager lives as long as the app
                yield
        finally:
            if ctx.mqtt is not None:
                ctx.mqtt.hold_for_shutdown()  # ingest drains what it holds, not a stream that keeps coming
            for task in reversed(tasks):
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
            if ctx.controllers is not None:
                await ctx.controllers.close_all()
            if ctx.broker_sync is not None:
                await ctx.broker_sync.close()
            if ctx.mqtt is not None:
                await ctx.mqtt.stop()
            if ctx.cluster is not None:
                await ctx.cluster.close()
            if ctx.broker is not None:
                await ctx.broker.stop()
            await db.dispose()
            log.info("Waystation stopped")

    app = FastAPI(
        title="Waystation",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.metrics = Metrics()
    app.state.limiter = RateLimiter(settings)  # per app: each app (and test) counts on its own
    mcp = McpEndpoint(settings, lambda: app.state.ctx, app.state.metrics.registry)
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware,
        default=settings.max_body_bytes,
        # Firmware uploads get their own, larger limit; an explicit setting for the same path wins.
        by_path={
            **firmware_body_limits(settings),
            **snapshot_body_limits(settings),
            **settings.max_body_bytes_by_path,
        },
    )
    if settings.trusted_proxies:
        # Added last, so it runs first: everything after it (rate limits, audit) sees the real client.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    api = APIRouter(prefix="/api/v1")
    for router in (
        auth_router,
        tokens_router,
        station_router,
        devices_router,
        broker_router,
        provisioning_router,
        ble_provisioning_router,
        telemetry_router,
        flows_router,
        webhooks_router,
        realtime_router,
        status_router,
        audit_router,
        dashboards_router,
        oplog_router,
        controllers_router,
        ota_router,
        rules_router,
        cloud_router,
        snapshots_router,
        mcp_router,
        cluster_router,
    ):
        api.include_router(router)
    app.include_router(api)
    app.include_router(telemetry_ws_router)
    app.include_router(controller_ws_router)
    app.include_router(provisioning_ws_router)
    app.include_router(emqx_http_router)  # /api/internal/emqx: EMQX's callbacks, not part of /api/v1
    app.include_router(status_probes)
    app.router.routes.append(mcp.route())  # /mcp: streamable HTTP for AI agents (docs/mcp.md)
    install_web(app)  # the web UI (or the landing page without a build); keep it last
    return app
