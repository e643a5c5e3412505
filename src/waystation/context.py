"""The running station's shared parts, handed to routes through `request.app.state.ctx`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from waystation.auth.internal import InternalVerifier
from waystation.auth.tokens import TokenSigner
from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database
from waystation.secrets_box import SecretBox

if TYPE_CHECKING:
    from waystation.auth.keys import KeyRing
    from waystation.broker.embedded import EmbeddedBroker
    from waystation.broker.sync import BrokerSync
    from waystation.cloud.link import CloudLink
    from waystation.cluster.service import Cluster
    from waystation.controller.hub import ControllerHub
    from waystation.devices.runtime import DeviceRuntime
    from waystation.flows.registry import FlowRegistry
    from waystation.mqtt.link import MqttLink
    from waystation.ota.driver import OtaDriver
    from waystation.provisioning.ble.manager import ProvisioningManager
    from waystation.rules.runtime import RuleEngine
    from waystation.snapshots.schedule import SnapshotScheduler
    from waystation.status.sampler import StatusSampler
    from waystation.telemetry.ingest import IngestPipeline
    from waystation.telemetry.retention import RetentionJob
    from waystation.webhooks.delivery import DeliveryDispatcher
    from waystation.webhooks.fanout import WebhookFanout


@dataclass
class AppContext:
    settings: Settings
    db: Database
    bus: Bus
    signer: TokenSigner
    box: SecretBox
    internal: InternalVerifier
    keys: KeyRing | None = None
    mqtt: MqttLink | None = None
    broker: EmbeddedBroker | None = None
    broker_sync: BrokerSync | None = None
    devices: DeviceRuntime | None = None
    ingest: IngestPipeline | None = None
    retention: RetentionJob | None = None
    deliveries: DeliveryDispatcher | None = None
    webhooks: WebhookFanout | None = None
    flows: FlowRegistry | None = None
    controllers: ControllerHub | None = None
    ota: OtaDriver | None = None
    rules: RuleEngine | None = None
    status_sampler: StatusSampler | None = None
    cloud: CloudLink | None = None
    snapshots: SnapshotScheduler | None = None
    provisioning_manager: ProvisioningManager | None = None
    cluster: Cluster | None = None  # one of several workers (docs/scaling.md); None: a single process
    started_at: float = field(default_factory=time.time)
    default_station_id: str = ""
