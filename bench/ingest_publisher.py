"""Publisher for bench/ingest.py: device state messages at QoS 1, flat out or at a fixed rate.

A minimal MQTT 3.1.1 client on a plain socket (CONNECT, PUBLISH at QoS 1, count the PUBACKs): it
costs a fraction of the CPU paho would, which leaves the two cores to the broker and the process being
measured. Messages go round-robin over the given devices; the k-th message of a device is

    station/<station>/device/<device>/state   {"state":{"a":k,"b":<j>,"c":<x.y>},"ts":<ts-base + k>}

so `ts` (epoch milliseconds) is unique per device and `a` is the device's sequence number. At most
`--window` messages are unacknowledged at a time (packet ids are reused only after their PUBACK; the
broker acknowledges in order). With `--out`, the wall-clock time each message of `--tracer` was
written to the socket goes to a JSON file (list index = that device's sequence number k), which is
what bench/ingest.py measures publish → commit latency against.

    python bench/ingest_publisher.py --port P --station SID --devices sim-0001,sim-0002 --messages N \
        [--rate MSG_PER_S] [--ts-base MS] [--tracer sim-0001 --out FILE]

Prints one JSON line with what it did on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


class Acks:
    """Counts PUBACKs in a thread of its own (they are 4 bytes each: 0x40 0x02 id id)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.count = 0
        self.error: str | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                self.error = f"recv: {exc}"
                break
            if not data:
                break
            buf += data
            n = len(buf) // 4
            frames, buf = buf[: n * 4], buf[n * 4 :]
            if frames[0::4] != b"\x40" * n or frames[1::4] != b"\x02" * n:
                self.error = f"unexpected packet from the broker: {frames[:16]!r}"
                break
            self.count += n
        self.closed = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--station", required=True)
    parser.add_argument("--devices", required=True, help="comma-separated device ids")
    parser.add_argument("--messages", type=int, required=True, help="messages to publish in all")
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second (0: flat out)")
    parser.add_argument("--ts-base", type=int, default=None, help="epoch ms of each device's first ts")
    parser.add_argument("--window", type=int, default=20_000, help="unacknowledged messages at most")
    parser.add_argument("--tracer", default=None, help="device whose publish times go to --out")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    devices = args.devices.split(",")
    nd = len(devices)
    ts_base = args.ts_base if args.ts_base is not None else int(time.time() * 1000)
    window = max(1, min(args.window, 60_000))  # packet ids are 16-bit; keep them unique in flight
    topics = [mqtt_str(f"station/{args.station}/device/{d}/state") for d in devices]
    tracer = devices.index(args.tracer) if args.tracer else -1
    tracer_times: list[float] = []

    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = mqtt_str("MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big") + mqtt_str(f"bench-pub-{os.getpid()}")
    sock.sendall(b"\x10" + varint(len(body)) + body)
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            print("broker closed the connection before CONNACK", file=sys.stderr)
            return 1
        connack += chunk
    if connack[0] != 0x20 or connack[3] != 0:
        print(f"connection refused: {connack!r}", file=sys.stderr)
        return 1
    acks = Acks(sock)

    def packets(start: int, stop: int) -> bytes:
        out = []
        for j in range(start, stop):
            dev, k = j % nd, j // nd
            payload = b'{"state":{"a":%d,"b":%d,"c":%d.%d},"ts":%d}' % (k, j, j % 100, j % 10, ts_base + k)
            topic = topics[dev]
            pid = (j % 65535) + 1
            out.append(b"\x32" + varint(len(topic) + 2 + len(payload)) + topic + pid.to_bytes(2, "big"))
            out.append(payload)
        return b"".join(out)

    n = args.messages
    sent = 0
    behind_max = 0.0  # how far the rate-limited publisher fell behind its schedule, in seconds
    waited_for_acks = 0
    t_start = time.time()
    p_start = time.perf_counter()
    if args.rate <= 0:
        while sent < n:
            stop = min(n, sent + 500)
            while stop - acks.count > window:
                if acks.closed:
                    break
                waited_for_acks += 1
                time.sleep(0.0002)
            data = packets(sent, stop)
            now = time.time()
            sock.sendall(data)
            if tracer >= 0:
                tracer_times.extend([now] * sum(1 for j in range(sent, stop) if j % nd == tracer))
            sent = stop
            if acks.closed:
                break
    else:
        rate = args.rate
        while sent < n:
            elapsed = time.perf_counter() - p_start
            due = min(n, int(elapsed * rate) + 1)
            if due <= sent:
                time.sleep(max(0.0, min(0.001, sent / rate - elapsed)))
                continue
            behind_max = max(behind_max, elapsed - sent / rate)
            stop = min(due, sent + 1000)
            while stop - acks.count > window and not acks.closed:
                waited_for_acks += 1
                time.sleep(0.0002)
            data = packets(sent, stop)
            now = time.time()
            sock.sendall(data)
            if tracer >= 0:
                # one stamp per tracer message in this chunk: the moment the chunk went to the socket
                tracer_times.extend([now] * sum(1 for j in range(sent, stop) if j % nd == tracer))
            sent = stop
            if acks.closed:
                break
    t_sent = time.time()
    p_sent = time.perf_counter()
    deadline = time.monotonic() + 120
    while acks.count < sent and not acks.closed and time.monotonic() < deadline:
        time.sleep(0.001)
    t_acked = time.time()
    p_acked = time.perf_counter()
    with_error = acks.error
    try:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    acks.thread.join(5)
    sock.close()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"tracer": args.tracer, "times": tracer_times}, f)
    summary = {
        "published": sent,
        "acked": acks.count,
        "devices": nd,
        "ts_base": ts_base,
        "ts_last": ts_base + (n - 1) // nd,
        "t_start": t_start,
        "t_sent": t_sent,
        "t_acked": t_acked,
        "rate_sent_per_s": round(sent / max(p_sent - p_start, 1e-9), 1),
        "rate_acked_per_s": round(acks.count / max(p_acked - p_start, 1e-9), 1),
        "target_rate_per_s": args.rate or None,
        "behind_schedule_max_s": round(behind_max, 4),
        "waits_for_acks": waited_for_acks,
        "tracer_messages": len(tracer_times),
        "error": with_error,
    }
    print(json.dumps(summary), flush=True)
    return 0 if acks.count == n and not with_error else 1


if __name__ == "__main__":
    sys.exit(main())
