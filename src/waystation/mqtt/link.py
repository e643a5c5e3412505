"""The station's MQTT connection.

paho-mqtt runs its own network thread (measured about twice as fast as an asyncio wrapper here, see
DESIGN §7) and hands received messages to the asyncio loop through a bounded inbox. When the inbox is
full, or a consumer has paused the link, the network thread waits: the socket stops being read and
the broker holds the QoS 1 messages. That is back-pressure instead of unbounded memory.

With `manual_ack`, a QoS 1 message is acknowledged only when every handler that `hold()`s its
`AckToken` has released it. The ingest pipeline releases after its batch is committed, so a crash
before the commit means the broker redelivers (persistent session). paho reconnects by itself with a
capped backoff, and every (re)connect re-subscribes all filters. A broker outage never touches the
HTTP API.

With `shared_group` (several workers, MQTT 5), every filter goes to the broker as
`$share/<group>/<filter>` so the broker hands each message to one worker; handlers still see the plain
filter and the message's real topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from waystation.config import MqttEndpoint
from waystation.mqtt import paho_speedups
from waystation.mqtt.topics import AckToken, Handler, MessageInfo, TopicRouter, validate_filter

log = logging.getLogger(__name__)


class _HeldWake:
    """Stands in for paho's wake-up socket while a batch of acks is queued (see `MqttLink._send_acks`)."""

    def send(self, _data: bytes) -> int:
        return 1

    def close(self) -> None:
        pass


_HELD_WAKE = _HeldWake()


def _no_delay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    """Send small packets (acks, commands) at once: with Nagle's algorithm a QoS 1 exchange waited for
    the peer's delayed ACK, ~25 ms a message (measured by bench/bus_bridge.py)."""
    with contextlib.suppress(AttributeError, OSError):  # not a TCP socket (e.g. a WebSocket wrapper)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


ConnectionListener = Callable[[bool], None]
SHARED_RECONNECT_MIN, SHARED_RECONNECT_MAX = 0.05, 0.5  # seconds; see the shared_group note in __init__
DRAIN_CHUNK = 100  # messages per loop turn (~5 ms): database round trips and HTTP interleave with a flood


class MqttLink:
    def __init__(
        self,
        endpoint: MqttEndpoint,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        persistent_session: bool = False,
        manual_ack: bool = False,
        protocol: int = 5,
        inbox_size: int = 5_000,
        receive_maximum: int = 10_000,
        session_expiry: int = 7 * 24 * 3600,
        shared_group: str | None = None,
        fast_reconnect: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self._options: dict[str, Any] = {
            "username": username,
            "password": password,
            "keepalive": keepalive,
            "persistent_session": persistent_session,
            "manual_ack": manual_ack,
            "protocol": protocol,
            "inbox_size": inbox_size,
            "receive_maximum": receive_maximum,
            "session_expiry": session_expiry,
            "shared_group": shared_group,
            "fast_reconnect": fast_reconnect,
        }
        self.router = TopicRouter()
        self.protocol = protocol
        # Shared subscriptions exist only in MQTT 5; a 3.1.1 link keeps plain ones.
        self.shared_group = shared_group if protocol == 5 else None
        self._filters: dict[str, int] = {}  # filter → qos, re-subscribed on every connect
        # MQTT 5 subscription identifiers: the broker tells which of our subscriptions a message matched,
        # so a message matching two overlapping filters (sent once per subscription) reaches each
        # subscription's handlers once, not every handler twice.
        self._sub_ids: dict[str, int] = {}
        self._filter_of_id: dict[int, str] = {}
        self._next_sub_id = 1
        self._filter_refs: dict[str, int] = {}
        self._listeners: list[ConnectionListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[tuple[paho.MQTTMessage, int]] = deque()
        self._generation = 0  # bumped on every connect, in the network thread
        self._inbox_size = inbox_size
        self._inbox_space = threading.Condition()
        self._drain_scheduled = False
        self._paused = False
        self._held = False  # hold_for_shutdown(): paused until the end, whatever resume() says
        self._stopping = False
        self.connected = False
        self.session_present = False  # the broker still had our session at the last connect
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.received = 0
        self.handler_errors = 0
        self.unacked = 0  # QoS 1 messages handed to handlers and not yet acknowledged
        self._pending_acks: list[tuple[int, int, int | None]] = []  # (mid, qos, generation), see ack()
        self._by_topic = False  # dispatch by topic, not subscription id (see `mirror`)
        self._mirrored: list[str] = []
        self.manual_ack = manual_ack
        self._persistent = persistent_session

        if protocol == 5:
            paho_speedups.install()  # MQTT 5 decoding without per-message table building
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=manual_ack
            )
            self._connect_props: Properties | None = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # How many unacknowledged QoS 1 messages the broker may have in flight to us: acks come
            # per committed batch, so this must comfortably exceed one batch.
            self._connect_props.ReceiveMaximum = receive_maximum
            if persistent_session:
                self._connect_props.SessionExpiryInterval = session_expiry
        else:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=not persistent_session,
                protocol=paho.MQTTv311,
                manual_ack=manual_ack,
            )
            self._connect_props = None
        user = username if username is not None else endpoint.username
        pwd = password if password is not None else endpoint.password
        if user:
            self._client.username_pw_set(user, pwd)
        if endpoint.tls:
            self._client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        if fast_reconnect and self.shared_group:
            # Mosquitto (2.0.11) does not persist shared subscriptions: after a broker restart our session
            # comes back without them, and every message until our SUBSCRIBE matches no one and is dropped
            # (bench/shared_sub_probe.py). Reconnect at once and keep retrying fast to shrink that gap.
            # (paho annotates the delays as int; it only does float arithmetic with them)
            self._client.reconnect_delay_set(
                min_delay=SHARED_RECONNECT_MIN,  # type: ignore[arg-type]
                max_delay=SHARED_RECONNECT_MAX,  # type: ignore[arg-type]
            )
        else:
            self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._keepalive = keepalive
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = _no_delay

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background; returns at once (the broker may still be down)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        if self.protocol == 5:
            self._client.connect_async(
                self.endpoint.host,
                self.endpoint.port,
                keepalive=self._keepalive,
                clean_start=not self._persistent,
                properties=self._connect_props,
            )
        else:
            self._client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=self._keepalive)
        self._client.loop_start()

    async def stop(self, end_session: bool = False) -> None:
        """Disconnect; `end_session` also ends the broker's session (MQTT 5), which leaves its shared
        subscriptions: only once nothing is unacknowledged, or those messages are lost."""
        self._stopping = True
        self._send_acks()
        with self._inbox_space:
            self._inbox_space.notify_all()
        props = None
        if end_session and self.protocol == 5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        await asyncio.to_thread(self._client.disconnect, properties=props)
        await asyncio.to_thread(self._client.loop_stop)
        self.connected = False

    async def wait_connected(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while not self.connected:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    # --- back-pressure ------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop handing messages to handlers; the inbox fills, then the socket is no longer read."""
        self._paused = True

    def hold_for_shutdown(self) -> None:
        """Stop handing messages to handlers for good: what is queued for us stays unacknowledged at
        the broker (redelivered to our session next time), so consumers can drain and stop instead of
        chasing a stream that keeps coming."""
        self._held = True
        self._paused = True

    def resume(self) -> None:
        if not self._paused or self._held:
            return
        self._paused = False
        with self._inbox_space:
            schedule = bool(self._inbox) and not self._drain_scheduled
            self._drain_scheduled = self._drain_scheduled or schedule
        if schedule and self._loop is not None:
            self._loop.call_soon(self._drain)

    @property
    def paused(self) -> bool:
        return self._paused

    # --- subscriptions -----------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        validate_filter(topic_filter)
        self.router.add(topic_filter, handler)
        self._filter_refs[topic_filter] = self._filter_refs.get(topic_filter, 0) + 1
        if topic_filter not in self._filters:
            self._filters[topic_filter] = qos
            sub_id = self._next_sub_id
            self._next_sub_id += 1
            self._sub_ids[topic_filter] = sub_id
            self._filter_of_id[sub_id] = topic_filter
            if self.connected:
                self._subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str, handler: Handler) -> None:
        self.router.remove(topic_filter, handler)
        refs = self._filter_refs.get(topic_filter, 0) - 1
        if refs > 0:
            self._filter_refs[topic_filter] = refs
            return
        self._filter_refs.pop(topic_filter, None)
        sub_id = self._sub_ids.pop(topic_filter, None)
        if sub_id is not None:
            self._filter_of_id.pop(sub_id, None)
        if self._filters.pop(topic_filter, None) is not None and self.connected:
            self._client.unsubscribe(self.broker_filter(topic_filter))

    def broker_filter(self, topic_filter: str) -> str:
        """The filter as the broker sees it (`$share/<group>/…` on a shared link)."""
        return f"$share/{self.shared_group}/{topic_filter}" if self.shared_group else topic_filter

    def _subscribe(self, topic_filter: str, qos: int) -> None:
        if self.protocol == 5:
            props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            props.SubscriptionIdentifier = self._sub_ids[topic_filter]
            self._client.subscribe(self.broker_filter(topic_filter), qos, properties=props)
        else:
            self._client.subscribe(topic_filter, qos)

    @property
    def filters(self) -> list[str]:
        return list(self._filters)

    def sibling(self, client_id: str) -> MqttLink:
        """A link to the same broker with the same options under another client id."""
        return MqttLink(self.endpoint, client_id, **self._options)

    def mirror(self, other: MqttLink) -> None:
        """Handle messages as `other` does, without subscribing: for resuming another client's session,
        whose subscriptions the broker already holds (and whose subscription ids may differ from ours,
        so messages are matched by topic)."""
        self._by_topic = True
        self._mirrored = list(other._filters)
        for topic_filter in other._filters:
            for handler in other.router.handlers_of(topic_filter):
                self.router.add(topic_filter, handler)

    def unsubscribe_all(self) -> None:
        """Leave every subscription (also a mirrored session's) on the broker; handlers stay for the
        messages already in flight."""
        for topic_filter in {*self._filters, *self._mirrored}:
            if self.connected:
                self._client.unsubscribe(self.broker_filter(topic_filter))
        self._filters.clear()

    # --- publishing ----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message for sending; False when the broker is not connected (nothing is queued)."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return bool(info.rc == paho.MQTT_ERR_SUCCESS)

    def publish_json(self, topic: str, data: Any, qos: int = 1, retain: bool = False) -> bool:
        return self.publish(topic, orjson.dumps(data), qos=qos, retain=retain)

    def ack(self, mid: int, qos: int, generation: int | None = None) -> None:
        """Acknowledge a QoS>0 message received with manual acks (sent at the end of this loop turn)."""
        if qos == 0:
            return
        self.unacked = max(0, self.unacked - 1)
        self._pending_acks.append((mid, qos, generation))
        if len(self._pending_acks) == 1:
            loop = self._loop
            try:
                on_loop = loop is not None and asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            if on_loop and loop is not None:
                loop.call_soon(self._send_acks)
            else:
                self._send_acks()

    def _send_acks(self) -> None:
        """Send the queued acks with one wake-up of paho's network thread.

        paho wakes its thread (a byte on a socket pair) for every packet it queues; a committed batch
        releases up to thousands of acks at once, and waking the thread for each made the two threads
        trade the GIL thousands of times. The wake-up is held back while the batch is queued (paho's
        private `_sockpairW`, the only way to do this with paho) and sent once after it.
        """
        acks, self._pending_acks = self._pending_acks, []
        if not acks or not self.connected:
            return
        client = self._client
        wake = getattr(client, "_sockpairW", None)
        if wake is not None and len(acks) > 1:
            # A stand-in, never None: paho's thread (reconnect, subscribe, ping) and `stop()`'s
            # disconnect also queue packets and read the attribute twice (`is not None`, then `.send`).
            client._sockpairW = _HELD_WAKE  # type: ignore[assignment]
        try:
            for mid, qos, generation in acks:
                if generation is not None and generation != self._generation:
                    # Received on an earlier connection: the broker redelivers it on this one under a
                    # new id, and this old id may now name another message. Dropping it is the safe choice.
                    continue
                client.ack(mid, qos)
        finally:
            if wake is not None and len(acks) > 1:
                client._sockpairW = wake
                with contextlib.suppress(BlockingIOError, OSError):
                    wake.send(b"0")

    @property
    def inbox_depth(self) -> int:
        return len(self._inbox)

    # --- paho thread callbacks ------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("MQTT %s: %s", self.endpoint.display(), self.last_error)
            return
        self._generation += 1
        self.session_present = bool(getattr(_flags, "session_present", False))
        for topic_filter, qos in list(self._filters.items()):
            self._subscribe(topic_filter, qos)
        self._call_in_loop(self._set_connected, True)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not self._stopping:
            self.last_error = f"disconnected: {reason}"
        self._call_in_loop(self._set_connected, False)

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._inbox_space:
            while len(self._inbox) >= self._inbox_size and not self._stopping:
                self._inbox_space.wait(0.5)  # back-pressure: stop reading the socket
            self._inbox.append((msg, self._generation))
            schedule = not self._drain_scheduled and not self._paused
            if schedule:
                self._drain_scheduled = True
        if schedule:
            self._call_in_loop(self._drain)

    def _call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing during shutdown
            loop.call_soon_threadsafe(fn, *args)

    def _handlers(self, msg: paho.MQTTMessage, topic: str) -> list[Handler]:
        by_id = self.protocol == 5 and not self._by_topic
        ids = getattr(msg.properties, "SubscriptionIdentifier", None) if by_id else None
        if not ids:
            return self.router.handlers_for(topic)
        handlers: list[Handler] = []
        for sub_id in ids if isinstance(ids, list) else [ids]:
            topic_filter = self._filter_of_id.get(sub_id)
            if topic_filter is not None:
                handlers.extend(self.router.handlers_of(topic_filter))
        return handlers

    # --- asyncio side -------------------------------------------------------------------------

    def _set_connected(self, value: bool) -> None:
        if value == self.connected:
            return
        self.connected = value
        if value:
            self.connected_since = time.time()
            self.last_error = None
            log.info("MQTT connected to %s as %s", self.endpoint.display(), self.client_id)
        else:
            self.connected_since = None
            if not self._stopping:
                log.warning("MQTT connection to %s lost; reconnecting", self.endpoint.display())
        for listener in list(self._listeners):
            try:
                listener(value)
            except Exception:
                log.exception("MQTT connection listener failed")

    def _drain(self) -> None:
        with self._inbox_space:
            if self._paused:
                self._drain_scheduled = False
                return
            take = min(len(self._inbox), DRAIN_CHUNK)
            batch = [self._inbox.popleft() for _ in range(take)]
            more = bool(self._inbox)
            self._drain_scheduled = more
            self._inbox_space.notify_all()
        if more and self._loop is not None:
            self._loop.call_soon(self._drain)  # after other ready callbacks (HTTP, timers)
        manual = self.manual_ack
        for index, (msg, generation) in enumerate(batch):
            if self._paused:
                # A consumer asked for a pause while we were dispatching: keep the rest for later.
                with self._inbox_space:
                    self._inbox.extendleft(reversed(batch[index:]))
                    self._drain_scheduled = False
                break
            self.received += 1
            token = AckToken(self.ack, msg.mid, msg.qos, generation) if manual and msg.qos > 0 else None
            if token is not None:
                self.unacked += 1
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                self.handler_errors += 1
                if token is not None:
                    token.release()
                continue
            info = MessageInfo(
                qos=msg.qos, retain=bool(msg.retain), mid=msg.mid, dup=bool(msg.dup), ack=token
            )
            for handler in self._handlers(msg, topic):
                try:
                    handler(topic, bytes(msg.payload), info)
                except Exception:
                    # A handler bug must never stop the subscription; it is logged and counted.
                    self.handler_errors += 1
                    log.exception("MQTT handler failed for topic %s", topic)
            if token is not None:
                token.release()  # the link's own hold; acks now unless a handler still holds it
