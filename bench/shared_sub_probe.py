"""How Mosquitto treats an MQTT 5 shared-subscription member whose session outlives its connection.

Not a benchmark of speed: a reproducible measurement the worker design (docs/scaling.md) rests on.
Run it from the project root:

    .venv/bin/python bench/shared_sub_probe.py

A private Mosquitto on a free loopback port; two paho clients `probe-a` and `probe-b` share
`$share/g/probe/#` at QoS 1 with manual acknowledgements. Scenarios:

1. `offline_member`: A disconnects (DISCONNECT, its session kept for 300 s), N messages are published:
   how many reach B at once, how many are queued for A (delivered when A comes back)?
2. `crash_unacked`: both connected, A never acknowledges, then A's socket is cut (no DISCONNECT):
   are A's in-flight messages given to B, or kept for A's session?
3. `crash_unacked_expiry0`: the same, with A's session expiring at once (expiry 0).
4. `subscription_ids`: does a message of a shared subscription carry the subscription identifier?

Broker restarts (`persistence true`, SIGTERM, started again on the same port and directory), each run
twice on fresh brokers: one persistent-session client `S` (expiry 300 s, clean_start False as link.py)
with a plain `probe/#` and with a shared `$share/g/probe/#`. Each reports what the persistence file held
(chunks by type, the saved subscriptions) and the PUBACK reason codes the MQTT 5 publisher got:

5. `restart_then_publish`: S left (session kept), restart, N published; S reconnects without a
   SUBSCRIBE (how many arrive; does its session still route new ones?), then SUBSCRIBEs (do the first N
   arrive now?) and N more are published. `restart_then_publish_first_clean_start`: the same with S's
   very first CONNECT clean_start True (Mosquitto 2.0 then never writes the session to disk).
6. `queued_then_restart`: N queued for S (offline) before the restart: restored?
7. `inflight_then_restart`: S connected, holding its acks for N; restart: redelivered?
8. `restart_mid_stream`: a device stream (as tests/telemetry/test_reliability.py) and a station-like S
   that SUBSCRIBEs in every on_connect; the broker restarts a third of the way in. Which acknowledged
   messages are lost, and were they acknowledged between the restart and S's SUBACK? Variants: the
   reconnect delay of link.py (1 to 30 s) and shorter ones, the broker down at once or for 2 s.

`--only members|restart` runs one group; `--no-save` only prints. One JSON object goes to stdout and,
for a full run, to bench/results/shared-subscriptions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from _common import MOSQUITTO, Child, Children, free_port, log, mosquitto_version, start_broker, wait_port

RESULTS = Path(__file__).resolve().parent / "results" / "shared-subscriptions.json"
N = 100


class Member:
    """One shared-subscription member that records what it receives and acks only when told to."""

    def __init__(self, port: int, client_id: str, group: str, *, expiry: int, ack: bool) -> None:
        self.port, self.client_id, self.expiry, self.ack = port, client_id, expiry, ack
        self.filter = f"$share/{group}/probe/#"
        self.received: list[int] = []
        self.sub_ids: list[Any] = []
        self.connected = threading.Event()
        self.client = self._make()

    def _make(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
        props.SubscriptionIdentifier = 7
        client.subscribe(self.filter, 1, properties=props)
        self.connected.set()

    def _on_message(self, client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received.append(int(msg.payload))
        self.sub_ids.append(getattr(msg.properties, "SubscriptionIdentifier", None))
        if self.ack:
            client.ack(msg.mid, msg.qos)

    def connect(self, *, clean_start: bool = False) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.expiry
        self.connected.clear()
        self.client.connect("127.0.0.1", self.port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        if not self.connected.wait(5):
            raise RuntimeError(f"{self.client_id} did not connect")
        time.sleep(0.2)  # the SUBACK

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def crash(self) -> None:
        """Cut the socket without DISCONNECT, as a killed process would; the client is not reused."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()
        self.client = self._make()


def publish(port: int, first: int, count: int) -> None:
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="probe-pub", protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(f"probe/{i % 7}", str(i), qos=1) for i in range(first, first + count)]
    for info in infos:
        info.wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()


def settle(*members: Member, quiet: float = 1.0, limit: float = 10.0) -> None:
    """Wait until no member received anything for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        total = sum(len(m.received) for m in members)
        if total == last:
            return
        last = total
        time.sleep(quiet)


def offline_member(port: int) -> dict[str, Any]:
    a = Member(port, "probe-a1", "g1", expiry=300, ack=True)
    b = Member(port, "probe-b1", "g1", expiry=300, ack=True)
    a.connect()
    b.connect()
    a.disconnect()
    publish(port, 0, N)
    settle(b)
    to_b_while_a_away = len(b.received)
    a.connect()
    settle(a, b)
    out = {
        "published": N,
        "to_b_while_a_offline": to_b_while_a_away,
        "queued_for_a_delivered_on_reconnect": len(a.received),
        "lost": N - len(set(a.received) | set(b.received)),
    }
    a.disconnect()
    b.disconnect()
    return out


def crash_unacked(port: int, expiry: int, tag: str) -> dict[str, Any]:
    a = Member(port, f"probe-a-{tag}", tag, expiry=expiry, ack=False)
    b = Member(port, f"probe-b-{tag}", tag, expiry=300, ack=True)
    a.connect()
    b.connect()
    publish(port, 0, N)
    settle(a, b)
    held_by_a = sorted(a.received)
    first_b = len(b.received)
    a.crash()
    time.sleep(2.0)  # the broker notices the closed socket at once; give it time to re-route
    settle(b)
    b_after_crash = sorted(set(b.received[first_b:]))
    # New messages while A is away (its session may still exist): queued for A or given to B?
    b_before_new = len(b.received)
    publish(port, N, N)
    settle(b)
    new_to_b = len(b.received) - b_before_new
    a.ack = True
    a.received.clear()
    a.connect()
    settle(a, b)
    redelivered_to_a = sorted(set(a.received))
    got = set(b.received) | set(a.received) | set()
    out = {
        "session_expiry_s": expiry,
        "published": 2 * N,
        "unacked_held_by_a_at_crash": len(held_by_a),
        "of_those_redelivered_to_b": len(set(held_by_a) & set(b_after_crash)),
        "new_while_a_away_to_b": new_to_b,
        "delivered_to_a_on_reconnect": len(redelivered_to_a),
        "of_those_were_a_inflight": len(set(held_by_a) & set(redelivered_to_a)),
        "lost": 2 * N - len(got | set(held_by_a) & set(redelivered_to_a)),
        "lost_if_a_never_returns": 2 * N - len(set(b.received)),
    }
    a.disconnect()
    b.disconnect()
    return out


def subscription_ids(port: int) -> dict[str, Any]:
    a = Member(port, "probe-ids", "ids", expiry=0, ack=True)
    a.connect(clean_start=True)
    publish(port, 0, 5)
    settle(a)
    a.disconnect()
    return {"received": len(a.received), "subscription_ids": sorted({str(i) for i in a.sub_ids})}


# --- broker restarts (persistence true) ----------------------------------------------------------------
#
# A plain subscription (`probe/#`) and a shared one (`$share/g/probe/#`) of one persistent-session client,
# each on its own fresh broker, so the two can only differ by the `$share/` prefix.

KINDS = {"plain": "probe/#", "shared": "$share/g/probe/#"}


class PersistentBroker:
    """A private Mosquitto with `persistence true`, stopped with SIGTERM (which saves the database) and
    started again on the same port and persistence directory, as tests/helpers.py `Broker.restart`."""

    def __init__(self, children: Children, workdir: Path, port: int) -> None:
        self.children, self.workdir, self.port = children, workdir, port
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"per_listener_settings false\n"
            f"listener {port} 127.0.0.1\n"
            f"allow_anonymous true\n"
            f"persistence true\n"
            f"persistence_location {workdir}/\n"
            f"max_queued_messages 100000\n"
            f"max_inflight_messages 1000\n"  # as tests/helpers.py
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            f"log_type all\n"
        )
        self.child: Child | None = None
        self.started_at = 0.0

    @property
    def db(self) -> Path:
        return self.workdir / "mosquitto.db"

    def start(self) -> None:
        self.child = self.children.spawn(f"mosquitto-{self.port}", [MOSQUITTO, "-c", str(self.conf)])
        wait_port(self.port, 10)
        self.started_at = time.monotonic()

    def stop(self) -> None:
        if self.child is not None:
            self.children.stop(self.child)  # SIGTERM: Mosquitto writes its persistence file on the way out
            self.child = None

    def restart(self) -> None:
        self.stop()
        self.start()


def db_summary(path: Path) -> dict[str, Any]:
    """What a Mosquitto 2.0 persistence file (format 6) holds: chunks counted by type, and the
    (client id, topic filter) of every saved subscription chunk."""
    names = {1: "cfg", 2: "msg_store", 3: "client_msg", 4: "retain", 5: "sub", 6: "client"}
    if not path.exists():
        return {"exists": False}
    data = path.read_bytes()
    out: dict[str, Any] = {"bytes": len(data), "chunks": {}, "saved_subscriptions": []}
    pos = 15 + 4 + 4  # magic, crc, db version
    version = struct.unpack(">I", data[19:23])[0] if len(data) >= 23 else None
    out["db_version"] = version
    while pos + 8 <= len(data):
        ctype, length = struct.unpack(">II", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        name = names.get(ctype, str(ctype))
        out["chunks"][name] = out["chunks"].get(name, 0) + 1
        if ctype == 5 and len(body) >= 12:
            # struct PF_sub: uint32 identifier, uint16 id_len, uint16 topic_len, uint8 qos, uint8 options,
            # 2 padding bytes; then the client id and the topic filter
            _ident, id_len, topic_len = struct.unpack(">IHH", body[:8])
            cid = body[12 : 12 + id_len].decode(errors="replace")
            topic = body[12 + id_len : 12 + id_len + topic_len].decode(errors="replace")
            out["saved_subscriptions"].append(f"{cid} {topic}")
        pos += 8 + length
    return out


class Sub:
    """One persistent-session subscriber (MQTT 5, QoS 1, manual acks), optionally re-subscribing on
    every CONNACK the way src/waystation/mqtt/link.py `_on_connect` does."""

    def __init__(
        self, port: int, client_id: str, topic_filter: str, *, ack: bool = True, resubscribe: bool = True
    ) -> None:
        self.port, self.client_id, self.filter = port, client_id, topic_filter
        self.ack, self.resubscribe = ack, resubscribe
        self.received: list[int] = []
        self.dups: list[int] = []
        self.session_present: list[bool] = []
        self.subacked_at: list[float] = []
        self.connected_at: list[float] = []
        self.connected = threading.Event()
        self.subacked = threading.Event()
        self.client = self._make()

    def _make(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, _reason: Any, _props: Any) -> None:
        self.connected_at.append(time.monotonic())
        self.session_present.append(bool(getattr(flags, "session_present", False)))
        if self.resubscribe:
            client.subscribe(self.filter, 1)
        self.connected.set()

    def _on_subscribe(self, *_: Any) -> None:
        self.subacked_at.append(time.monotonic())
        self.subacked.set()

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.received.append(int(msg.payload))
        if msg.dup:
            self.dups.append(int(msg.payload))
        if self.ack:
            client.ack(msg.mid, msg.qos)

    def connect(self, *, clean_start: bool = False) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        self.connected.clear()
        self.subacked.clear()
        self.client.connect("127.0.0.1", self.port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        if not self.connected.wait(5):
            raise RuntimeError(f"{self.client_id} did not connect")
        if self.resubscribe and not self.subacked.wait(5):
            raise RuntimeError(f"{self.client_id}: no SUBACK")

    def subscribe_now(self) -> None:
        self.subacked.clear()
        self.client.subscribe(self.filter, 1)
        if not self.subacked.wait(5):
            raise RuntimeError(f"{self.client_id}: no SUBACK")

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def freeze(self) -> None:
        """Stop the network thread without DISCONNECT; the next connect() uses a new client object."""
        self.client.loop_stop()
        self.client = self._make()


def publish_counted(port: int, first: int, count: int) -> dict[str, Any]:
    """Publish `first..first+count-1` at QoS 1 (MQTT 5) and count the PUBACKs by reason code."""
    codes: dict[str, int] = {}

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        key = str(reason)
        codes[key] = codes.get(key, 0) + 1

    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="probe-pub", protocol=paho.MQTTv5)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(f"probe/{i % 7}", str(i), qos=1) for i in range(first, first + count)]
    for info in infos:
        info.wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    return {"pubacked": sum(codes.values()), "puback_reason_codes": codes}


def _settle_subs(*subs: Sub, quiet: float = 1.0, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        total = sum(len(s.received) for s in subs)
        if total == last:
            return
        last = total
        time.sleep(quiet)


def _in(received: list[int], first: int, count: int) -> int:
    return len({n for n in received if first <= n < first + count})


def _fresh_broker(children: Children, name: str) -> PersistentBroker:
    broker = PersistentBroker(children, children.workdir / name, free_port())
    broker.start()
    return broker


def restart_then_publish(children: Children, kind: str, *, first_clean_start: bool = False) -> dict[str, Any]:
    """Hypothesis 1: S subscribed and left (session kept), the broker restarts, N are published before S
    is back. S reconnects (clean_start False) without subscribing: how many arrive? Then S SUBSCRIBEs:
    do the N arrive then? N more after the SUBSCRIBE: do they arrive?

    `first_clean_start`: S's first CONNECT has clean_start True (session expiry still 300 s). Mosquitto
    2.0 then keeps the session in memory but does not write it (nor its subscriptions or queue) to the
    persistence file, so a restart loses it whatever the subscription; link.py always sends False."""
    broker = _fresh_broker(children, f"h1-{kind}-{first_clean_start}")
    s = Sub(broker.port, f"probe-h1-{kind}", KINDS[kind], resubscribe=False)
    s.connect(clean_start=first_clean_start)
    s.subscribe_now()
    s.disconnect()
    broker.restart()
    db = db_summary(broker.db)
    pub1 = publish_counted(broker.port, 0, N)
    s.connect(clean_start=False)
    _settle_subs(s)
    without_subscribe = _in(s.received, 0, N)
    # Still no SUBSCRIBE: does the restored session route *new* messages to S?
    pub2 = publish_counted(broker.port, N, N)
    _settle_subs(s)
    new_without_subscribe = _in(s.received, N, N)
    s.subscribe_now()
    _settle_subs(s)
    old_after_subscribe = _in(s.received, 0, N)
    pub3 = publish_counted(broker.port, 2 * N, N)
    _settle_subs(s)
    out = {
        "saved_in_persistence_file": db,
        "session_present_on_reconnect": s.session_present[-1],
        "published_after_restart_before_reconnect": N,
        "pubacks": pub1,
        "delivered_on_reconnect_without_subscribe": without_subscribe,
        "published_after_reconnect_without_subscribe": N,
        "pubacks_2": pub2,
        "delivered_without_subscribe": new_without_subscribe,
        "of_first_n_delivered_after_resubscribe": old_after_subscribe,
        "published_after_resubscribe": N,
        "pubacks_3": pub3,
        "delivered_after_resubscribe": _in(s.received, 2 * N, N),
        "lost_of_pubacked": 3 * N - len(set(s.received)),
    }
    s.disconnect()
    broker.stop()
    return out


def queued_then_restart(children: Children, kind: str) -> dict[str, Any]:
    """Hypothesis 2: N are queued for S (offline, session kept) before the broker restarts: are they
    restored and delivered when S reconnects, without and with a new SUBSCRIBE?"""
    broker = _fresh_broker(children, f"h2-{kind}")
    s = Sub(broker.port, f"probe-h2-{kind}", KINDS[kind], resubscribe=False)
    s.connect(clean_start=False)  # as link.py; see restart_then_publish's first_clean_start
    s.subscribe_now()
    s.disconnect()
    pub = publish_counted(broker.port, 0, N)
    broker.restart()
    db = db_summary(broker.db)
    s.connect(clean_start=False)
    _settle_subs(s)
    without_subscribe = _in(s.received, 0, N)
    s.subscribe_now()
    _settle_subs(s)
    out = {
        "saved_in_persistence_file": db,
        "queued_for_s_before_restart": N,
        "pubacks": pub,
        "session_present_on_reconnect": s.session_present[-1],
        "delivered_on_reconnect_without_subscribe": without_subscribe,
        "delivered_after_resubscribe_too": _in(s.received, 0, N),
        "lost_of_pubacked": N - len(set(s.received)),
    }
    s.disconnect()
    broker.stop()
    return out


def inflight_then_restart(children: Children, kind: str) -> dict[str, Any]:
    """Hypothesis 3: S is connected and holds its acks; the broker restarts: are S's unacknowledged
    messages redelivered after the restart (S reconnects without, then with a new SUBSCRIBE)?"""
    broker = _fresh_broker(children, f"h3-{kind}")
    s = Sub(broker.port, f"probe-h3-{kind}", KINDS[kind], ack=False, resubscribe=False)
    s.connect(clean_start=False)  # as link.py; see restart_then_publish's first_clean_start
    s.subscribe_now()
    pub = publish_counted(broker.port, 0, N)
    _settle_subs(s)
    held = sorted(set(s.received))
    s.freeze()  # no ack, no DISCONNECT: the broker's shutdown cuts the connection
    broker.restart()
    db = db_summary(broker.db)
    s.received.clear()
    s.ack = True
    s.connect(clean_start=False)
    _settle_subs(s)
    redelivered = sorted(set(s.received))
    s.subscribe_now()
    _settle_subs(s)
    out = {
        "saved_in_persistence_file": db,
        "published": N,
        "pubacks": pub,
        "unacked_held_by_s_at_restart": len(held),
        "session_present_on_reconnect": s.session_present[-1],
        "redelivered_on_reconnect_without_subscribe": len(set(held) & set(redelivered)),
        "of_those_with_dup_flag": len(set(held) & set(s.dups)),
        "redelivered_after_resubscribe_too": len(set(held) & set(s.received)),
        "lost_of_pubacked": len(set(held) - set(s.received)),
    }
    s.disconnect()
    broker.stop()
    return out


class StreamPublisher:
    """A device publishing a QoS 1 stream from a thread, as tests/telemetry/test_reliability.py
    `Publisher` (MQTT 3.1.1, persistent session, reconnect delay 0.2 to 1 s); remembers when each message
    number was acknowledged."""

    def __init__(self, port: int, count: int, rate: float) -> None:
        self.count, self.rate = count, rate
        self._acked: dict[int, float] = {}  # mid → monotonic time of the PUBACK
        self._sent: list[tuple[int, int]] = []  # (mid, message number)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="probe-stream-pub", clean_session=False
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]  # paho takes floats
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.published = 0

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        self._acked.setdefault(mid, time.monotonic())

    def _run(self) -> None:
        for n in range(self.count):
            info = self.client.publish("probe/stream", str(n), qos=1)
            self._sent.append((info.mid, n))
            self.published = n + 1
            time.sleep(1.0 / self.rate)

    def acked(self) -> dict[int, float]:
        acked = dict(self._acked)
        return {n: acked[mid] for mid, n in list(self._sent) if mid in acked}

    def finish(self) -> None:
        self.thread.join(60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(self._acked) < self.count:
            time.sleep(0.1)
        self.client.loop_stop()
        self.client.disconnect()


def restart_mid_stream(
    children: Children,
    kind: str,
    *,
    sub_min_delay: float,
    sub_max_delay: float = 30.0,
    down_s: float = 0.0,
    count: int = 1500,
    rate: float = 500.0,
) -> dict[str, Any]:
    """The docs/scaling.md finding in small: a station-like subscriber (persistent session, manual acks,
    SUBSCRIBE in every on_connect, paho reconnect delay `sub_min_delay` to 30 s; link.py uses 1 s) and a
    device stream; the broker restarts a third of the way in. Which acknowledged messages never arrive,
    and when were they acknowledged relative to the subscriber's SUBACK after the restart? `down_s`: the
    broker stays stopped that long (both clients' reconnect backoff grows meanwhile)."""
    broker = _fresh_broker(children, f"live-{kind}-{sub_min_delay}-{down_s}")
    s = Sub(broker.port, f"probe-live-{kind}", KINDS[kind], resubscribe=True)
    s.client.reconnect_delay_set(sub_min_delay, sub_max_delay)  # type: ignore[arg-type]  # paho takes floats
    s.connect(clean_start=False)
    pub = StreamPublisher(broker.port, count, rate)
    pub.thread.start()
    while pub.published < count // 3:
        time.sleep(0.01)
    t_stop = time.monotonic()
    broker.stop()
    time.sleep(down_s)
    broker.start()
    t_up = broker.started_at
    pub.finish()
    _settle_subs(s, limit=20)
    acked = pub.acked()
    got = set(s.received)
    lost = sorted(n for n in acked if n not in got)
    # The subscriber's first CONNACK / SUBACK after the stop (with a short reconnect delay it can be
    # accepted before our own port poll notices the broker is up: then the figures are negative).
    suback = next((t for t in s.subacked_at if t > t_stop), None)
    reconnect = next((t for t in s.connected_at if t > t_stop), None)
    in_window = [n for n in acked if suback is not None and t_stop <= acked[n] <= suback]
    out = {
        "subscriber_reconnect_delay_s": [sub_min_delay, sub_max_delay],
        "broker_kept_down_s": down_s,
        "published": count,
        "rate_per_s": rate,
        "pubacked": len(acked),
        "received": len(got),
        "lost_of_pubacked": len(lost),
        "lost_range": [lost[0], lost[-1]] if lost else None,
        "broker_down_s": round(t_up - t_stop, 3),
        "subscriber_reconnected_after_broker_up_s": round(reconnect - t_up, 3) if reconnect else None,
        "subscriber_suback_after_broker_up_s": round(suback - t_up, 3) if suback else None,
        "pubacked_between_restart_and_suback": len(in_window),
        "of_those_lost": len(set(in_window) & set(lost)),
        "lost_outside_that_window": len(set(lost) - set(in_window)),
    }
    s.disconnect()
    broker.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["members", "restart"], help="run one group of scenarios")
    parser.add_argument("--no-save", action="store_true", help=f"print only; do not write {RESULTS.name}")
    args = parser.parse_args()
    children = Children(Path(tempfile.mkdtemp(prefix="ws-probe-")))
    scenarios: dict[str, Any] = {}
    try:
        if args.only in (None, "members"):
            port = free_port()
            start_broker(children, children.workdir, port)
            log(f"mosquitto {mosquitto_version()} on 127.0.0.1:{port}")
            scenarios["offline_member"] = offline_member(port)
            scenarios["crash_unacked"] = crash_unacked(port, 300, "p")
            scenarios["crash_unacked_expiry0"] = crash_unacked(port, 0, "z")
            scenarios["subscription_ids"] = subscription_ids(port)
            children.stop_all()
        if args.only in (None, "restart"):
            for name, fn in (
                ("restart_then_publish", restart_then_publish),
                ("queued_then_restart", queued_then_restart),
                ("inflight_then_restart", inflight_then_restart),
            ):
                scenarios[name] = {kind: fn(children, kind) for kind in KINDS}
                log(f"{name} done")
            scenarios["restart_then_publish_first_clean_start"] = {
                kind: restart_then_publish(children, kind, first_clean_start=True) for kind in KINDS
            }
            # name: (kind, subscriber's reconnect delay min and max (link.py: 1 and 30 s), seconds the
            # broker stays down); the device publisher reconnects after 0.2 to 1 s
            live = {
                "plain_link_py_delay": ("plain", 1.0, 30.0, 0.0),
                "shared_link_py_delay": ("shared", 1.0, 30.0, 0.0),
                "shared_fast_reconnect": ("shared", 0.05, 30.0, 0.0),
                "plain_link_py_delay_down_2s": ("plain", 1.0, 30.0, 2.0),
                "shared_link_py_delay_down_2s": ("shared", 1.0, 30.0, 2.0),
                "shared_fast_reconnect_down_2s": ("shared", 0.05, 30.0, 2.0),
                "shared_fast_capped_reconnect_down_2s": ("shared", 0.05, 0.1, 2.0),
            }
            scenarios["restart_mid_stream"] = {
                name: restart_mid_stream(children, kind, sub_min_delay=lo, sub_max_delay=hi, down_s=down)
                for name, (kind, lo, hi, down) in live.items()
            }
            log("restart_mid_stream done")
    finally:
        children.stop_all()
    result = {
        "benchmark": "shared-subscriptions",
        "mosquitto": mosquitto_version(),
        "filter": "$share/<group per scenario>/probe/#; restart scenarios: probe/# vs $share/g/probe/#",
        "qos": 1,
        "messages_per_step": N,
        "scenarios": scenarios,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_save and args.only is None:
        RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
