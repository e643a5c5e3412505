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
        fail("--workers > 1 is not available in this version yet; run one process per machine.")
    settings.ensure_data_dir()
    setup_logging(settings.data_dir, debug=settings.debug)
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
    from waystation.db import Database
    from waystation.devices.types import seed_device_types
    from waystation.simulator.device import SimConfig
    from waystation.simulator.fleet import Fleet, plan_fleet, register_fleet
    from waystation.station.service import ensure_default_station

    settings = settings_from(config)
    members = plan_fleet(devices, prefix=prefix, only_type=type_)
    station_id = station
    if register or station_id is None:

        async def _register() -> str:
            db = Database(settings)
            try:
                async with db.session() as session:
                    # The same rows the station creates on its first start (types are FK targets).
                    await seed_device_types(session)
                    sid = station_id or (await ensure_default_station(session)).id
                if register:
                    created = await register_fleet(db, sid, members)
                    console.print(f"registered {created} new device(s) in station {sid}")
                return sid
            finally:
                await db.dispose()

        station_id = run_db_task(settings, _register)
    try:
        endpoint = MqttEndpoint.parse(mqtt) if mqtt else replace(settings.mqtt, embedded=False)
    except ValueError as exc:
        fail(str(exc))
    fleet = Fleet(
        members,
        SimConfig(
            endpoint=endpoint, station_id=station_id, state_interval=1.0 / rate, heartbeat_interval=heartbeat
        ),
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


def main() -> None:
    app()
