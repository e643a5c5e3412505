"""The running station's shared parts, handed to routes through `request.app.state.ctx`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from waystation.auth.tokens import TokenSigner
from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database

if TYPE_CHECKING:
    from waystation.broker.embedded import EmbeddedBroker
    from waystation.devices.runtime import DeviceRuntime
    from waystation.flows.registry import FlowRegistry
    from waystation.mqtt.link import MqttLink
    from waystation.telemetry.ingest import IngestPipeline
    from waystation.telemetry.retention import RetentionJob
    from waystation.webhooks.delivery import DeliveryDispatcher


@dataclass
class AppContext:
    settings: Settings
    db: Database
    bus: Bus
    signer: TokenSigner
    mqtt: MqttLink | None = None
    broker: EmbeddedBroker | None = None
    devices: DeviceRuntime | None = None
    ingest: IngestPipeline | None = None
    retention: RetentionJob | None = None
    deliveries: DeliveryDispatcher | None = None
    flows: FlowRegistry | None = None
    started_at: float = field(default_factory=time.time)
    default_station_id: str = ""
