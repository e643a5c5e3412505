"""Client binding (PROTOCOLS §3): an admin issues a one-time bind token for a device; whoever holds it
(a device without BLE, an agent, third-party gear) exchanges it once for the device's credentials."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from waystation.auth.security import new_secret, sha256_hex
from waystation.broker import credentials as broker_credentials
from waystation.devices import service as devices_service
from waystation.devices.models import Device
from waystation.errors import BindTokenExpired, BindTokenInvalid, BindTokenUsed, DeviceDisabled
from waystation.provisioning.models import BindToken
from waystation.secrets_box import SecretBox

BIND_TOKEN_PREFIX = "wsb_"
BIND_TOKEN_LIFETIME = timedelta(minutes=5)


@dataclass(frozen=True)
class Bound:
    device: Device
    device_token: str
    mqtt: broker_credentials.IssuedCredentials


async def issue_bind_token(session: AsyncSession, device_id: str, actor: str) -> tuple[str, datetime]:
    token = new_secret(BIND_TOKEN_PREFIX)
    expires_at = datetime.now(UTC) + BIND_TOKEN_LIFETIME
    session.add(
        BindToken(token_hash=sha256_hex(token), device_id=device_id, created_by=actor, expires_at=expires_at)
    )
    await session.flush()
    return token, expires_at


async def bind(session: AsyncSession, box: SecretBox, token: str) -> Bound:
    """Spend the bind token and hand out fresh credentials: a new device token and a new (or rotated)
    broker account, synced to the broker through the outbox in this same transaction."""
    token_hash = sha256_hex(token)
    row = await session.get(BindToken, token_hash)
    if row is None:
        raise BindTokenInvalid("This bind token is unknown.")
    now = datetime.now(UTC)
    if row.used_at is not None:
        raise BindTokenUsed("This bind token was already used; ask an admin for a new one.")
    if row.expires_at <= now:
        raise BindTokenExpired(
            "This bind token has expired (they last 5 minutes); ask an admin for a new one."
        )
    # Spend it with a guarded UPDATE, so two clients racing with the same token cannot both win.
    spent = await session.execute(
        update(BindToken)
        .where(BindToken.token_hash == token_hash, BindToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise BindTokenUsed("This bind token was already used; ask an admin for a new one.")
    device = await devices_service.get_device(session, row.device_id)
    if not device.enabled:
        # A token issued before the device was disabled must not hand its credentials out now.
        raise DeviceDisabled("This device is disabled; an admin must enable it and issue a new bind token.")
    device_token = devices_service.issue_device_token(device)
    mqtt = await broker_credentials.issue_credentials(session, box, device.id)
    return Bound(device, device_token, mqtt)


async def drop_unused_tokens(session: AsyncSession, device_id: str) -> None:
    """Called when a device is disabled: its outstanding bind tokens are void."""
    await session.execute(
        delete(BindToken).where(BindToken.device_id == device_id, BindToken.used_at.is_(None))
    )
