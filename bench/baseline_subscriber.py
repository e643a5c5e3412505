"""Baseline for bench/devices.py: a bare paho-mqtt subscriber on `station/#` that only counts messages.

It subscribes at QoS 1 like the station (but MQTT 3.1.1, clean session and paho's automatic acks, where
the station uses MQTT 5, a persistent session and acks after the commit) and does nothing with the
messages, so its CPU and RSS are the floor that merely receiving the fleet's traffic costs in Python.
Prints `subscribed <unix time>` when the broker has granted the subscription, then
`received <count> <unix time>` every INTERVAL seconds (default 1) on stdout. bench/ingest.py uses it
with a short interval as the baseline rate for the ingest benchmark; with PROTOCOL 5 it speaks MQTT 5
(still clean, automatic acks) to show what the protocol version alone costs in paho.

    python bench/baseline_subscriber.py HOST PORT [INTERVAL] [PROTOCOL]
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
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    v5 = len(sys.argv) > 4 and sys.argv[4] == "5"

    def on_connect(client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        client.subscribe("station/#", qos=1)

    def on_subscribe(_c: paho.Client, _u: object, _mid: object, _codes: object, _p: object) -> None:
        print(f"subscribed {time.time():.3f}", flush=True)

    def on_message(_c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        global received
        received += 1

    def report() -> None:
        while True:
            time.sleep(interval)
            print(f"received {received} {time.time():.3f}", flush=True)

    if v5:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-baseline5-{port}", protocol=paho.MQTTv5
        )
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-baseline-{port}",
            clean_session=True,
            protocol=paho.MQTTv311,
        )
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=30)
    threading.Thread(target=report, daemon=True).start()
    client.loop_forever()


if __name__ == "__main__":
    main()
