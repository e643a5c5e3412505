"""The `waystation` command line (PROTOCOLS §1). Every command that touches the database migrates it first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from waystation import __version__
from waystation.config import MqttEndpoint, Settings, load_settings
from waystation.errors import WaystationError

T = TypeVar("T")

app = typer.Typer(
    help="Waystation: a self-hosted IoT edge station.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
user_app = typer.Typer(help="Manage local user accounts.", no_args_is_help=True)
app.add_typer(user_app, name="user")
console = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def settings_from(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except FileNotFoundError as exc:
        fail(str(exc))
    except ValidationError as exc:
        problems = "; ".join(
            f"WAYSTATION_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")


def run_db_task(settings: Settings, coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Migrate, then run one async database task, turning our errors into clean messages."""
    from waystation.db import migrate

    async def _main() -> T:
        await migrate(settings)
        return await coro_factory()

    try:
        return asyncio.run(_main())
    except WaystationError as exc:
        fail(exc.detail)
    except OSError as exc:
        fail(f"cannot reach the database: {exc}")


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Show the version")] = False) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def run(
    demo: Annotated[bool, typer.Option(help="Also start a small simulated fleet")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (more than 1 needs PostgreSQL)")] = 1,
    debug: Annotated[bool, typer.Option(help="Console log at DEBUG")] = False,
    config: ConfigOption = None,
) -> None:
    """Migrate the database, start the broker (embedded default) and every service."""
    import uvicorn

    from waystation.app import AppOptions, create_app
    from waystation.broker.embedded import port_is_free
    from waystation.logs import setup_logging

    settings = settings_from(config, debug=debug or None)
    if workers > 1:
        if settings.is_sqlite:
            fail(
                "--workers > 1 needs PostgreSQL: set WAYSTATION_DATABASE_URL=postgresql+asyncpg://… "
                "(SQLite allows one writer process)."
            )
        if settings.mqtt.embedded:
            fail(
                "--workers > 1 needs an external MQTT 5 broker shared by the workers: set "
                "WAYSTATION_MQTT_URL=mqtt://host:1883 (the embedded broker belongs to one process)."
            )
        settings.cluster = "on"  # workers share subscriptions and the bus (docs/scaling.md)
        if demo:
            fail("--demo runs with one process only.")
    settings.ensure_data_dir()
    # With workers this process (uvicorn's manager) writes the same files as they do.
    setup_logging(settings.data_dir, debug=settings.debug, shared=workers > 1)
    if not port_is_free(settings.http_host, settings.http_port):
        fail(
            f"HTTP port {settings.http_port} on {settings.http_host} is already in use. "
            f"Stop the other program or set WAYSTATION_HTTP_PORT to a free port."
        )
    endpoint = settings.mqtt
    if endpoint.embedded and not port_is_free(endpoint.host, endpoint.port):
        fail(
            f"MQTT port {endpoint.port} on {endpoint.host} is already in use (another broker?). "
            f"Either stop it, or give the embedded broker a free port with "
            f"WAYSTATION_MQTT_URL=embedded://{endpoint.host}:18830, or use that broker with "
            f"WAYSTATION_MQTT_URL=mqtt://{endpoint.host}:{endpoint.port}."
        )

    if workers > 1:
        from waystation.auth.internal import load_or_create_internal_secret
        from waystation.cluster.process import export_settings
        from waystation.secrets_box import SecretBox

        # The data directory's keys exist before the workers start, so they do not race to create them.
        SecretBox(settings.data_dir)
        load_or_create_internal_secret(settings.data_dir, settings.internal_secret)
        # uvicorn's process manager: one shared socket, N workers from the app factory, dead ones
        # started again. Each worker migrates (under an advisory lock) and joins the cluster.
        export_settings(settings)
        uvicorn.run(
            "waystation.cluster.process:worker_app",
            factory=True,
            workers=workers,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            proxy_headers=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        return

    def announce(message: str) -> None:
        console.print(f"[bold yellow]{message}[/]")

    application = create_app(settings, AppOptions(demo=demo, announce=announce))
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            proxy_headers=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    if not server.started:
        sys.exit(3)


@app.command()
def simulate(
    devices: Annotated[int, typer.Option(min=1, max=20000, help="How many devices")] = 10,
    rate: Annotated[
        float, typer.Option(min=0.001, max=100.0, help="State messages per second per device")
    ] = 0.1,
    heartbeat: Annotated[float, typer.Option(min=1.0, help="Seconds between heartbeats")] = 30.0,
    mqtt: Annotated[str | None, typer.Option(help="Broker URL (default: the station's)")] = None,
    station: Annotated[str | None, typer.Option(help="Station id (default: this data dir's station)")] = None,
    prefix: Annotated[str, typer.Option(help="Device id prefix")] = "sim",
    type_: Annotated[str | None, typer.Option("--type", help="Only this device type")] = None,
    register: Annotated[bool, typer.Option(help="Create the devices in this data dir's database")] = True,
    duration: Annotated[
        float, typer.Option(min=0.0, help="Stop after this many seconds (0: run until Ctrl-C)")
    ] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Run a fleet of simulated devices speaking the device protocol."""
    from waystation.broker.sync import NONE, expected_mode
    from waystation.db import Database
    from waystation.devices.types import seed_device_types
    from waystation.secrets_box import SecretBox
    from waystation.simulator.device import DeviceLogin, SimConfig
    from waystation.simulator.fleet import Fleet, fleet_logins, plan_fleet, register_fleet
    from waystation.station.service import ensure_default_station

    settings = settings_from(config)
    members = plan_fleet(devices, prefix=prefix, only_type=type_)
    try:
        endpoint = MqttEndpoint.parse(mqtt) if mqtt else replace(settings.mqtt, embedded=False)
    except ValueError as exc:
        fail(str(exc))
    station_id = station
    logins: dict[str, DeviceLogin] | None = None
    if register or station_id is None:

        async def _register() -> tuple[str, dict[str, DeviceLogin] | None]:
            # Where the station's broker enforces device accounts, each simulated device gets its own
            # (issued as POST /api/v1/devices does; the running station syncs it to the broker).
            enforced = expected_mode(settings) != NONE and not endpoint.username
            db = Database(settings)
            try:
                async with db.session() as session:
                    # The same rows the station creates on its first start (types are FK targets).
                    await seed_device_types(session)
                    sid = station_id or (await ensure_default_station(session)).id
                if not register:
                    return sid, None
                created = await register_fleet(db, sid, members)
                console.print(f"registered {created} new device(s) in station {sid}")
                if not enforced:
                    return sid, None
                return sid, await fleet_logins(db, SecretBox(settings.data_dir), members)
            finally:
                await db.dispose()

        station_id, logins = run_db_task(settings, _register)
    fleet = Fleet(
        members,
        SimConfig(
            endpoint=endpoint, station_id=station_id, state_interval=1.0 / rate, heartbeat_interval=heartbeat
        ),
        logins=logins,
    )
    console.print(
        f"simulating {devices} device(s) on {endpoint.display()} for station {station_id}; Ctrl-C stops"
    )
    logging.basicConfig(level=logging.WARNING)

    async def _run() -> None:
        if duration > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.run(), duration)
            console.print(
                f"published {fleet.published} message(s); {fleet.connected} device(s) connected at the end"
            )
        else:
            await fleet.run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run())


def _read_password(password_stdin: bool, confirm: bool = True) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            fail("no password on standard input")
        return password
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[str, typer.Option(help="owner, admin, member or viewer")] = "viewer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a local user."""
    from waystation.audit import service as audit
    from waystation.auth import service
    from waystation.db import Database

    settings = settings_from(config)
    password = _read_password(password_stdin)

    async def _create() -> None:
        db = Database(settings)
        try:
            async with db.session() as session:
                user = await service.create_user(session, name, password, role)
                audit.record(
                    session,
                    actor="cli",
                    action="user.create",
                    target=f"user:{user.id}",
                    summary=f"created {name} as {role}",
                )
        finally:
            await db.dispose()

    run_db_task(settings, _create)
    console.print(f"created user {name!r} with role {role}")


@user_app.command("passwd")
def user_passwd(
    name: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Set a user's password (ends all of that user's sessions)."""
    from waystation.audit import service as audit
    from waystation.auth import service
    from waystation.db import Database

    settings = settings_from(config)
    password = _read_password(password_stdin)

    async def _passwd() -> None:
        db = Database(settings)
        try:
            async with db.session() as session:
                user = await service.get_user(session, name)
                await service.set_password(session, user, password)
                audit.record(
                    session,
                    actor="cli",
                    action="user.passwd",
                    target=f"user:{user.id}",
                    summary="password changed",
                )
        finally:
            await db.dispose()

    run_db_task(settings, _passwd)
    console.print(f"password of {name!r} changed")


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Apply database migrations and exit."""

    async def _noop() -> None:
        return None

    settings = settings_from(config)
    run_db_task(settings, _noop)
    console.print("database is up to date")


@app.command()
def controller(
    url: Annotated[
        str | None, typer.Option(help="The station's base URL (default: WAYSTATION_CONTROLLER_URL)")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="The controller's wsc_… token (better: WAYSTATION_CONTROLLER_TOKEN, not in `ps`)"),
    ] = None,
    buffer_dir: Annotated[
        Path | None, typer.Option(help="Directory of the disk buffer and the cached configuration")
    ] = None,
    buffer_max_rows: Annotated[int | None, typer.Option(help="Most readings kept while offline")] = None,
    buffer_max_bytes: Annotated[
        int | None, typer.Option(help="Most bytes of readings kept while offline")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Log at DEBUG")] = False,
) -> None:
    """Run the plugin controller: run the plugins the station configures and stream their readings (§9)."""
    from waystation.controller.process import run_controller
    from waystation.controller.settings import ControllerSettings

    overrides = {
        "url": url,
        "token": token,
        "buffer_dir": buffer_dir,
        "buffer_max_rows": buffer_max_rows,
        "buffer_max_bytes": buffer_max_bytes,
    }
    try:
        settings = ControllerSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"WAYSTATION_CONTROLLER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        fail(f"invalid settings: {problems}")
    if not settings.token:
        fail("give the controller's token: --token or WAYSTATION_CONTROLLER_TOKEN (POST /api/v1/controllers)")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the log
    try:
        asyncio.run(run_controller(settings))
    except OSError as exc:
        fail(f"cannot use the buffer directory {settings.buffer_dir}: {exc}")


@app.command("ble-bridge")
def ble_bridge(
    simulate: Annotated[
        bool, typer.Option(help="A fake radio with simulated devices (no Bluetooth)")
    ] = False,
    state_interval: Annotated[
        float, typer.Option(min=0.1, help="Simulated devices: seconds between state messages")
    ] = 5.0,
    debug: Annotated[bool, typer.Option(help="Log at DEBUG (to stderr)")] = False,
) -> None:
    """The BLE provisioning bridge (PROTOCOLS §8): JSON lines on stdin/stdout; the station runs it."""
    from waystation.provisioning.ble.bridge import main as bridge_main

    bridge_main(simulate=simulate, state_interval=state_interval, debug=debug)


@app.command("fake-emqx")
def fake_emqx(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback only)")] = 18083,
    api_key: Annotated[str, typer.Option(help="API key EMQX would have issued")] = "waystation",
    api_secret: Annotated[str | None, typer.Option(help="API secret (default: random, printed)")] = None,
) -> None:
    """Serve an in-memory stand-in for the EMQX 5 management API (demos and tests of broker sync)."""
    import secrets

    import uvicorn

    from waystation.broker.fake_emqx import FakeEmqx

    secret = api_secret or secrets.token_urlsafe(16)
    fake = FakeEmqx(api_key=api_key, api_secret=secret)
    # Shown once on the console so a demo can be wired up; nothing is stored.
    console.print(
        f"fake EMQX API on http://127.0.0.1:{port}: WAYSTATION_EMQX_API_KEY={api_key} "
        f"WAYSTATION_EMQX_API_SECRET={secret}"
    )
    uvicorn.run(fake.app, host="127.0.0.1", port=port, log_level="warning")


# Registered here, after the helpers it uses (`fail`, `run_db_task`) are defined.
from waystation.snapshots.cli import snapshot_app  # noqa: E402

app.add_typer(snapshot_app, name="snapshot")


@app.command("fake-cloud")
def fake_cloud(
    host: Annotated[
        str, typer.Option(help="Address of the station WebSocket (the control API stays on 127.0.0.1)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the station WebSocket (0: any free port)")] = 8765,
    control_port: Annotated[
        int | None, typer.Option(help="Port of the control API (default: PORT + 1; 0: any free port)")
    ] = None,
    require_registration: Annotated[
        bool, typer.Option(help="Accept claims only for chip ids registered with POST /claims")
    ] = False,
) -> None:
    """Serve a small cloud for the station's cloud link (docs/cloud.md#the-fake-cloud)."""
    from waystation.cloud.fake import FakeCloud

    fake = FakeCloud(
        host=host,
        port=port,
        control_port=control_port if control_port is not None else (port + 1 if port else 0),
        require_registration=require_registration,
    )

    async def _serve() -> None:
        await fake.start()
        console.print(f"fake cloud: station WebSocket {fake.url}  control API {fake.control_url}")
        console.print(f"  on the station: WAYSTATION_CLOUD_URL={fake.url}")
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())


def main() -> None:
    app()
