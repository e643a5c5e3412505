"""Per-device broker accounts: created with the device or at binding, rotated on demand, removed when the
device is disabled or deleted. Every change writes a `broker_outbox` row in the caller's transaction, so
the broker learns about it even when it is offline right now (the sync worker retries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.security import new_secret, sha256_hex
from waystation.broker.acl import device_username
from waystation.broker.models import BrokerOutbox, DeviceCredential
from waystation.config import MqttEndpoint, Settings
from waystation.db import emit
from waystation.secrets_box import SecretBox

# Bus event the sync worker listens for, so a committed change is applied at once, not at the next poll.
OUTBOX_EVENT = "broker.outbox"
# `broker_outbox.data` flag of an `upsert_client` row written for a new password.
ROTATED = "rotated"


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    username: str
    password: str = field(repr=False)
    client_id: str


def enqueue(
    session: AsyncSession,
    op: str,
    *,
    username: str | None = None,
    device_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Record a broker change to apply after this transaction commits."""
    session.add(BrokerOutbox(op=op, username=username, device_id=device_id, data=data or {}))
    emit(session, OUTBOX_EVENT, {"op": op, "username": username, "device_id": device_id})


async def issue_credentials(session: AsyncSession, box: SecretBox, device_id: str) -> IssuedCredentials:
    """Create the device's broker account, or rotate its password if it has one. The password is
    returned once; the broker receives it through the outbox."""
    password = new_secret("wsm_", 32)
    now = datetime.now(UTC)
    cred = await session.get(DeviceCredential, device_id)
    if cred is None:
        rotated = False
        cred = DeviceCredential(
            device_id=device_id,
            username=device_username(device_id),
            client_id=device_id,
            password_hash=sha256_hex(password),
            password_sealed=box.seal(password),
            created_at=now,
            rotated_at=now,
        )
        session.add(cred)
    else:
        cred.password_hash = sha256_hex(password)
        cred.password_sealed = box.seal(password)
        cred.rotated_at = now
        rotated = True
    await session.flush()
    # `rotated` travels with the row, so whoever applies it (also after a restart) ends the sessions
    # opened with the old password on brokers that keep them (EMQX).
    data = {ROTATED: True} if rotated else None
    enqueue(session, "upsert_client", username=cred.username, device_id=device_id, data=data)
    return IssuedCredentials(cred.username, password, cred.client_id)


async def device_access_changed(session: AsyncSession, device_id: str) -> None:
    """The device was enabled or disabled: the worker re-reads the database and adds or removes access."""
    cred = await session.get(DeviceCredential, device_id)
    if cred is not None:
        enqueue(session, "upsert_client", username=cred.username, device_id=device_id)


async def device_removed(session: AsyncSession, device_id: str) -> None:
    """Call before deleting the device: its account is removed and its clients disconnected."""
    cred = await session.get(DeviceCredential, device_id)
    username = cred.username if cred is not None else device_username(device_id)
    enqueue(session, "delete_client", username=username, device_id=device_id)


def client_endpoint(settings: Settings) -> tuple[str, int, bool]:
    """Host, port and TLS flag that devices should use (`WAYSTATION_MQTT_PUBLIC_URL` wins)."""
    endpoint = MqttEndpoint.parse(settings.mqtt_public_url) if settings.mqtt_public_url else settings.mqtt
    host = endpoint.host
    if host in {"0.0.0.0", "::", ""}:
        host = settings.base_url.split("//", 1)[-1].rsplit(":", 1)[0]
    return host, endpoint.port, endpoint.tls
