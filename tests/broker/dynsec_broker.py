"""A real Mosquitto with the dynamic security plugin, set up the way docs/broker.md tells an operator to
(`mosquitto_ctrl dynsec init`), plus a one-shot admin client to inspect and change it behind the
station's back."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from tests.helpers import free_port, wait_port
from waystation.broker.adapters.dynsec import CONTROL_TOPIC, RESPONSE_TOPIC, find_dynsec_plugin, hash_password
from waystation.broker.embedded import find_mosquitto, run_as_user

ADMIN = "admin"


def init_dynsec_file(path: Path, username: str, password: str) -> None:
    """`mosquitto_ctrl dynsec init`, or the same file by hand where mosquitto_ctrl is not installed."""
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl:
        subprocess.run(
            [ctrl, "dynsec", "init", str(path), username, password], check=True, capture_output=True
        )
        return
    everything = [
        {"acltype": t, "topic": "$CONTROL/dynamic-security/#", "allow": True}
        for t in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    path.write_text(
        json.dumps(
            {
                "clients": [
                    {"username": username, **hash_password(password), "roles": [{"rolename": "admin"}]}
                ],
                "roles": [{"rolename": "admin", "acls": everything}],
                "defaultACLAccess": {
                    "publishClientSend": False,
                    "publishClientReceive": True,
                    "subscribe": False,
                    "unsubscribe": True,
                },
            }
        )
    )


@dataclass
class DynsecMosquitto:
    port: int
    workdir: Path
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, workdir: Path) -> DynsecMosquitto:
        workdir.mkdir(parents=True, exist_ok=True)
        broker = cls(port=free_port(), workdir=workdir)
        init_dynsec_file(workdir / "dynamic-security.json", ADMIN, broker.admin_password)
        return broker

    def start(self) -> None:
        binary, plugin = find_mosquitto(), find_dynsec_plugin()
        if binary is None or plugin is None:
            raise RuntimeError(
                "mosquitto and its dynamic security plugin are needed (make test installs them)"
            )
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"user {run_as_user()}\nlistener {self.port} 127.0.0.1\nallow_anonymous false\n"
            f"plugin {plugin}\nplugin_opt_config_file {self.workdir}/dynamic-security.json\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    # --- looking behind the station's back ---------------------------------------------------------

    async def control(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        async with aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=ADMIN,
            password=self.admin_password,
            identifier=f"test-admin-{uuid.uuid4().hex[:6]}",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            # Every admin client receives every answer (the station's too): ours carry our tag.
            tag = uuid.uuid4().hex
            sent = [{**c, "correlationData": tag} for c in commands]
            await client.publish(CONTROL_TOPIC, orjson.dumps({"commands": sent}), qos=1)
            async for message in client.messages:
                responses = orjson.loads(message.payload)["responses"]  # type: ignore[arg-type]
                if responses and responses[0].get("correlationData") == tag:
                    return list(responses)
        raise AssertionError("no dynsec response")

    async def accounts(self) -> dict[str, dict[str, Any]]:
        """Every client with its client id, roles and the ACLs of those roles."""
        (listed,) = await self.control({"command": "listClients", "count": -1})
        names = listed["data"]["clients"]
        clients = await self.control(*({"command": "getClient", "username": n} for n in names))
        result: dict[str, dict[str, Any]] = {}
        for entry in clients:
            if "data" not in entry:  # removed since it was listed: the station is still at work
                continue
            client = entry["data"]["client"]
            roles = sorted(r["rolename"] for r in client.get("roles", []))
            role_data = (
                await self.control(*({"command": "getRole", "rolename": r} for r in roles)) if roles else []
            )
            result[client["username"]] = {
                "clientid": client.get("clientid"),
                "roles": roles,
                "acls": sorted(
                    (a["acltype"], a["topic"], a["allow"])
                    for r in role_data
                    for a in r.get("data", {}).get("role", {}).get("acls", [])
                ),
            }
        return result


@contextlib.asynccontextmanager
async def dynsec_mosquitto(workdir: Path) -> AsyncIterator[DynsecMosquitto]:
    broker = DynsecMosquitto.create(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
