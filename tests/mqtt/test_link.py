"""The MQTT link survives a broker restart: it reconnects, re-subscribes and nothing crashes."""

from __future__ import annotations

import asyncio

import aiomqtt

from tests.helpers import DeviceClient, start_mosquitto, start_station, wait_for
from waystation.config import MqttEndpoint
from waystation.mqtt.link import MqttLink
from waystation.mqtt.topics import MessageInfo


async def test_link_reconnects_and_resubscribes_after_broker_restart(tmp_path) -> None:
    broker = start_mosquitto(tmp_path)
    got: list[str] = []
    link = MqttLink(MqttEndpoint(False, "127.0.0.1", broker.port), "test-link")

    def handler(topic: str, payload: bytes, info: MessageInfo) -> None:
        got.append(payload.decode())

    link.subscribe("t/#", handler)
    transitions: list[bool] = []
    link.add_connection_listener(transitions.append)
    link.start()
    try:
        assert await link.wait_connected(5)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish("t/1", b"before", qos=1)
        await wait_for(lambda: "before" in got, message="first message")

        broker.restart()
        await wait_for(lambda: transitions[-2:] == [False, True], timeout=15, message="down then up again")
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish("t/2", b"after", qos=1)
        await wait_for(lambda: "after" in got, timeout=10, message="message after restart")
        assert link.publish("t/3", b"out")
    finally:
        await link.stop()
        broker.stop()


async def test_broker_outage_never_stops_the_http_api(settings_factory, tmp_path) -> None:
    broker = start_mosquitto(tmp_path / "b")
    settings = settings_factory(mqtt_url=f"mqtt://127.0.0.1:{broker.port}")
    try:
        async with start_station(settings) as station:
            headers = await station.owner_headers()
            await station.create_device("out-1", "climate")
            broker.stop()
            await wait_for(lambda: not station.ctx.mqtt.connected, timeout=10, message="link down")
            r = await station.client.get("/readyz")
            assert r.status_code == 503 and r.json()["broker"] == "unreachable"
            # The API keeps working; a command waits as queued.
            r = await station.client.post(
                "/api/v1/devices/out-1/commands", headers=headers, json={"action": "reboot"}
            )
            assert r.status_code == 202 and r.json()["status"] == "queued"
            broker.start()
            await wait_for(lambda: station.ctx.mqtt.connected, timeout=15, message="link back")
            assert (await station.client.get("/readyz")).status_code == 200
            # Subscriptions came back: device traffic is processed again.
            async with DeviceClient(broker.port, station.station_id, "out-1") as dev:
                await dev.publish("handshake", {"type": "climate", "firmwareVersion": "9.9.9"})
                commands = await wait_for(
                    lambda: dev.messages("command"), timeout=10, message="queued command"
                )
                assert commands[0]["action"] == "reboot"
            await asyncio.sleep(0)
    finally:
        broker.stop()
