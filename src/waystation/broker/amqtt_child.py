"""The pure-Python fallback broker (amqtt), run as a child process bound to one address.

Used only when no `mosquitto` binary is installed: `python -m waystation.broker.amqtt_child HOST PORT`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from amqtt.broker import Broker


async def serve(host: str, port: int) -> None:
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 5000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"amqtt broker listening on {host}:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s amqtt %(levelname)s %(message)s")
    host, port = sys.argv[1], int(sys.argv[2])
    if host not in {"127.0.0.1", "localhost", "::1"}:
        # The fallback broker has no authentication worth the name: loopback only.
        print("the amqtt fallback broker binds to loopback only", file=sys.stderr)
        host = "127.0.0.1"
    asyncio.run(serve(host, port))


if __name__ == "__main__":
    main()
