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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from waystation.mqtt.topics import AckToken, Handler, MessageInfo, TopicRouter, validate_filter

log = logging.getLogger(__name__)

ConnectionListener = Callable[[bool], None]
DRAIN_CHUNK = 2000  # messages handled per loop turn, so HTTP requests interleave with a flood


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
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.router = TopicRouter()
        self.protocol = protocol
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
        self._stopping = False
        self.connected = False
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.received = 0
        self.handler_errors = 0
        self.manual_ack = manual_ack
        self._persistent = persistent_session

        if protocol == 5:
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
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._keepalive = keepalive
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

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

    async def stop(self) -> None:
        self._stopping = True
        with self._inbox_space:
            self._inbox_space.notify_all()
        await asyncio.to_thread(self._client.disconnect)
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

    def resume(self) -> None:
        if not self._paused:
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
            self._client.unsubscribe(topic_filter)

    def _subscribe(self, topic_filter: str, qos: int) -> None:
        if self.protocol == 5:
            props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            props.SubscriptionIdentifier = self._sub_ids[topic_filter]
            self._client.subscribe(topic_filter, qos, properties=props)
        else:
            self._client.subscribe(topic_filter, qos)

    @property
    def filters(self) -> list[str]:
        return list(self._filters)

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
        """Acknowledge a QoS>0 message received with manual acks."""
        if qos == 0 or not self.connected:
            return
        if generation is not None and generation != self._generation:
            # Received on an earlier connection: the broker redelivers it on this one under a new id,
            # and this old id may now name another message. Dropping the stale ack is the safe choice.
            return
        self._client.ack(mid, qos)

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
        ids = getattr(msg.properties, "SubscriptionIdentifier", None) if self.protocol == 5 else None
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
