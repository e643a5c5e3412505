"""The embedded Mosquitto managed with dynamic security: generated accounts and state that survive a
restart, anonymous clients refused, device accounts applied as they are created."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Callable

import aiomqtt
import orjson

from tests.broker.test_dynsec import can_connect, create
from tests.helpers import StationHandle, free_port, start_station, wait_for
from waystation.broker.acl import ADMIN_USERNAME, STATION_USERNAME
from waystation.config import Settings


async def _link_up(station: StationHandle) -> None:
    await wait_for(
        lambda: station.ctx.mqtt is not None and station.ctx.mqtt.connected, message="station link"
    )


async def test_embedded_mosquitto_runs_with_dynamic_security(
    settings_factory: Callable[..., Settings],
) -> None:
    port = free_port()
    overrides = {"mqtt_url": f"embedded://127.0.0.1:{port}", "broker_sync_poll_seconds": 0.2}
    async with start_station(settings_factory(**overrides)) as station:
        assert station.ctx.broker is not None and station.ctx.broker.kind == "mosquitto"
        assert station.ctx.broker_sync is not None and station.ctx.broker_sync.mode == "mosquitto-dynsec"
        await _link_up(station)
        data = station.settings.data_dir
        for path in (data / "keys" / "broker-admin.key", data / "keys" / "broker-station.key"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        state_file = data / "broker" / "dynamic-security.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        conf = (data / "broker" / "mosquitto.conf").read_text()
        assert "allow_anonymous false" in conf and "plugin_opt_config_file" in conf
        state = orjson.loads(state_file.read_bytes())
        assert {c["username"] for c in state["clients"]} >= {ADMIN_USERNAME, STATION_USERNAME}
        assert not any(state["defaultACLAccess"].values())
        station_key = (data / "keys" / "broker-station.key").read_text().strip()
        assert station_key not in state_file.read_text()

        mqtt = await create(station, "em-1")
        assert not await can_connect(port, username=None, password=None, client_id="anon")
        assert not await can_connect(port, username=STATION_USERNAME, password="nope", client_id="x")
        root = f"station/{station.station_id}/device/em-1"
        async with aiomqtt.Client(
            "127.0.0.1", port, username=mqtt["username"], password=mqtt["password"], identifier="em-1"
        ) as device:
            await device.publish(f"{root}/state", orjson.dumps({"state": {"temperature": 18.0}}), qos=1)

            async def recorded() -> bool:
                return (await station.device("em-1"))["state"] == {"temperature": 18.0}

            await wait_for(recorded, message="state through the managed broker")

    # A restart reuses the generated passwords and the accounts Mosquitto saved.
    async with start_station(settings_factory(**overrides)) as station:
        await _link_up(station)
        assert await can_connect(port, username=mqtt["username"], password=mqtt["password"], client_id="em-1")
        sync = station.ctx.broker_sync
        assert sync is not None
        await wait_for(lambda: sync.last_reconcile is not None, message="start-up reconcile")
        assert sync.last_reconcile == {"created": 0, "updated": 0, "removed": 0}


async def test_simulate_command_logs_devices_in_with_their_own_accounts(
    settings_factory: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = settings_factory(mqtt_url=f"embedded://127.0.0.1:{port}", broker_sync_poll_seconds=0.2)
    async with start_station(settings) as station:
        await _link_up(station)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
        env.update(
            WAYSTATION_DATA_DIR=str(settings.data_dir),
            WAYSTATION_DATABASE_URL=settings.resolved_database_url,
            WAYSTATION_MQTT_URL=settings.mqtt_url,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "waystation", "simulate", "--devices", "2", "--rate", "5", "--prefix", "cli"),
            *("--duration", "30"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        headers = await station.owner_headers()
        try:

            async def online() -> bool:
                r = await station.client.get("/api/v1/devices", headers=headers, params={"status": "online"})
                return len([d for d in r.json()["items"] if d["id"].startswith("cli-") and d["state"]]) == 2

            await wait_for(online, timeout=25, message="simulated devices online")
        finally:
            proc.terminate()
            await proc.wait()
        accounts = await station.ctx.broker_sync.adapter.list_usernames()  # type: ignore[union-attr]
        assert {"dev-cli-0001", "dev-cli-0002"} <= accounts
