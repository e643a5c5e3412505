"""Baseline for bench/devices.py: a bare paho-mqtt subscriber on `station/#` that only counts messages.

It subscribes the way the station does (QoS 1, clean session, MQTT 3.1.1) and does nothing with the
messages, so its CPU and RSS are the floor that merely receiving the fleet's traffic costs in Python.
Prints `received <count> <unix time>` once a second on stdout.

    python bench/baseline_subscriber.py HOST PORT
"""

from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

received = 0


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])

    def on_connect(client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        client.subscribe("station/#", qos=1)

    def on_message(_c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        global received
        received += 1

    def report() -> None:
        while True:
            time.sleep(1.0)
            print(f"received {received} {time.time():.3f}", flush=True)

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-baseline-{port}",
        clean_session=True,
        protocol=paho.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    threading.Thread(target=report, daemon=True).start()
    client.loop_forever()


if __name__ == "__main__":
    main()
