"""The Wi-Fi network BLE-provisioned devices join. Only the station agent sets or reads it in full; the
password is sealed at rest and leaves the station only inside a BLE write to a device."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from waystation.errors import WifiNotConfigured
from waystation.provisioning.models import AgentWifi
from waystation.secrets_box import SecretBox

ROW_ID = 1
MAX_SSID_BYTES = 32  # 802.11: an SSID is up to 32 octets (UTF-8 here), not characters
PSK_MIN_BYTES, PSK_MAX_BYTES = 8, 63  # a WPA2/WPA3-Personal passphrase
PSK_HEX_LENGTH = 64  # or the raw 256-bit key as 64 hex digits
_HEX = frozenset("0123456789abcdefABCDEF")


def check_ssid(ssid: str) -> str:
    """The SSID if it fits 802.11's 32 bytes once encoded; ValueError (a 422) otherwise."""
    size = len(ssid.encode())
    if not ssid or size > MAX_SSID_BYTES:
        raise ValueError(f"an SSID is 1 to {MAX_SSID_BYTES} bytes in UTF-8; this one is {size}")
    return ssid


def check_password(password: str) -> str:
    """The password if a device can use it: empty (an open network), a WPA2 passphrase of 8 to 63 bytes
    or a 64-hex-digit key. ValueError otherwise: a device given anything else could never join, and the
    mistake would surface only later as `not_joined`."""
    size = len(password.encode())
    if password == "" or PSK_MIN_BYTES <= size <= PSK_MAX_BYTES:
        return password
    if len(password) == PSK_HEX_LENGTH and set(password) <= _HEX:
        return password
    raise ValueError(
        f'a Wi-Fi password is "" (open network), {PSK_MIN_BYTES} to {PSK_MAX_BYTES} bytes (WPA2 '
        f"passphrase) or {PSK_HEX_LENGTH} hex digits (raw key); this one is {size} bytes"
    )


@dataclass(frozen=True)
class WifiCredentials:
    ssid: str
    password: str = field(repr=False)
    updated_at: datetime


async def set_wifi(session: AsyncSession, box: SecretBox, ssid: str, password: str) -> None:
    row = await session.get(AgentWifi, ROW_ID)
    now = datetime.now(UTC)
    if row is None:
        session.add(AgentWifi(id=ROW_ID, ssid=ssid, password_sealed=box.seal(password), updated_at=now))
    else:
        row.ssid, row.password_sealed, row.updated_at = ssid, box.seal(password), now
    await session.flush()


async def configured(session: AsyncSession) -> AgentWifi | None:
    """The stored row (SSID and sealed password), or None before the agent set one."""
    return await session.get(AgentWifi, ROW_ID)


async def credentials(session: AsyncSession, box: SecretBox) -> WifiCredentials:
    """The Wi-Fi network in clear, for the agent and for the payload written to a device."""
    row = await configured(session)
    if row is None:
        raise WifiNotConfigured(
            "The station agent has not set the Wi-Fi network yet (PUT /api/v1/agent/wifi)."
        )
    try:
        password = box.open(row.password_sealed)
    except ValueError as exc:
        raise WifiNotConfigured(
            "The stored Wi-Fi password was sealed with another station key; the agent must set it again."
        ) from exc
    return WifiCredentials(row.ssid, password, row.updated_at)
