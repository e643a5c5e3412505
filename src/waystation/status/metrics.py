"""Prometheus metrics of one station process (a registry per app, so tests can run several)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.ingest_messages = Counter(
            "waystation_ingest_messages_total",
            "Messages whose readings were committed",
            registry=self.registry,
        )
        self.ingest_rows = Counter(
            "waystation_ingest_rows_total", "Datapoints committed", registry=self.registry
        )
        self.ingest_duplicates = Counter(
            "waystation_ingest_duplicate_rows_total",
            "Datapoints skipped as already stored (redeliveries)",
            registry=self.registry,
        )
        self.ingest_write_failures = Counter(
            "waystation_ingest_write_failures_total", "Failed batch writes (retried)", registry=self.registry
        )
        self.ingest_pauses = Counter(
            "waystation_ingest_pauses_total",
            "Times ingest paused the MQTT link (back-pressure)",
            registry=self.registry,
        )
        self.ingest_queue_rows = Gauge(
            "waystation_ingest_queue_rows", "Datapoints waiting to be written", registry=self.registry
        )
        self.ingest_batch_rows = Histogram(
            "waystation_ingest_batch_rows",
            "Datapoints per committed batch",
            registry=self.registry,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
        )
        self.ingest_commit_seconds = Histogram(
            "waystation_ingest_commit_seconds",
            "Time to write and commit one batch",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.ingest_latency_seconds = Histogram(
            "waystation_ingest_latency_seconds",
            "Message arrival to commit",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5),
        )
        self.deliveries = Counter(
            "waystation_deliveries_total",
            "Webhook and flow delivery attempts, by kind and outcome (succeeded, retry, dead_letter)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.asyncio_tasks = Gauge(
            "waystation_asyncio_tasks",
            "asyncio tasks alive in the station process (a steady number means nothing leaks)",
            registry=self.registry,
        )
        self.asyncio_tasks_by_coroutine = Gauge(
            "waystation_asyncio_tasks_by_coroutine",
            "asyncio tasks alive, by the coroutine they run (tells a growing kind from the rest)",
            ["coroutine"],
            registry=self.registry,
        )
        self.status_listeners = 0  # event streams that take `system.status`
        self.rejected: dict[str, int] = {}
        self._accepted_children: dict[str, Any] = {}
        self.accepted: dict[str, int] = {}

    def accept(self, kind: str) -> None:
        self.accepted[kind] = self.accepted.get(kind, 0) + 1
        child = self._accepted_children.get(kind)
        if child is None:  # the label lookup is costly on the hot path: do it once per kind
            child = self._accepted_children[kind] = self.mqtt_messages.labels(kind)
        child.inc()

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.mqtt_rejected.labels(reason).inc()
