"""Prometheus metrics of one station process (a registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mqtt_messages = Counter(
            "waystation_mqtt_messages_total",
            "Device messages accepted, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.mqtt_rejected = Counter(
            "waystation_mqtt_rejected_total",
            "Device messages dropped, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.device_flushes = Counter(
            "waystation_device_flushes_total", "Batched device-state transactions", registry=self.registry
        )
        self.devices_online = Gauge(
            "waystation_devices_online", "Devices currently online", registry=self.registry
        )
        self.sse_clients = Gauge("waystation_sse_clients", "Connected SSE clients", registry=self.registry)
        self.mqtt_connected = Gauge(
            "waystation_mqtt_connected", "1 when the broker link is up", registry=self.registry
        )
        self.rejected: dict[str, int] = {}
        self.accepted: dict[str, int] = {}

    def accept(self, kind: str) -> None:
        self.accepted[kind] = self.accepted.get(kind, 0) + 1
        self.mqtt_messages.labels(kind).inc()

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.mqtt_rejected.labels(reason).inc()
