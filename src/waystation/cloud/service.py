"""The cloud link's configuration row: identity, claim secret, station token, channels, on/off."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from waystation.cloud.models import CONFIG_ROW_ID, CloudConfig
from waystation.secrets_box import SecretBox
from waystation.station import service as station_service


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """What the link needs of the row, read in one go (plaintext secrets: keep them in memory only)."""

    url: str | None
    chip_id: str
    claim_secret: str
    station_token: str | None
    enabled: bool
    active_channels: tuple[str, ...]
    claimed_at: datetime | None


def url_allowed(url: str) -> bool:
    """wss:// anywhere; plain ws:// only to this machine (the fake cloud, tests): the station token and
    everything the cloud manages must not cross a network in clear."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parse_uri(url)  # what the WebSocket client will do with it (ASCII, a valid IDNA host, a port)
    except (ValueError, InvalidURI):
        return False
    if not host or parts.scheme not in ("ws", "wss"):
        return False
    if parts.scheme == "wss":
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_claim_secret() -> str:
    return secrets.token_urlsafe(24)


async def chip_id(session: AsyncSession) -> str:
    """Stable across unclaims and resets: derived from the default station's id, like a chip's serial."""
    station = await station_service.get_default_station(session)
    return f"ws-{station.id}"


async def ensure_config(session: AsyncSession, box: SecretBox) -> CloudConfig:
    """The row, created on first use with a fresh claim secret (link disabled)."""
    row = await session.get(CloudConfig, CONFIG_ROW_ID)
    if row is None:
        row = CloudConfig(
            id=CONFIG_ROW_ID,
            chip_id=await chip_id(session),
            claim_secret_sealed=box.seal(new_claim_secret()),
            active_channels=[],
            enabled=False,
        )
        session.add(row)
        await session.flush()
    return row


def read(row: CloudConfig, box: SecretBox) -> LinkConfig:
    return LinkConfig(
        url=row.url,
        chip_id=row.chip_id,
        claim_secret=box.open(row.claim_secret_sealed),
        station_token=box.open(row.station_token_sealed) if row.station_token_sealed else None,
        enabled=row.enabled,
        active_channels=tuple(row.active_channels or ()),
        claimed_at=row.claimed_at,
    )


async def load(session: AsyncSession, box: SecretBox) -> LinkConfig:
    return read(await ensure_config(session, box), box)


async def enable(
    session: AsyncSession, box: SecretBox, url: str | None, default_url: str | None
) -> tuple[CloudConfig, bool]:
    """Turn the link on, with `url` if given. Returns the row and whether the cloud changed: a station
    token belongs to the cloud that issued it, so moving to another URL forgets the token and the
    channels (the new cloud gets a fresh `claim_handshake`; the claim secret stays, the owner may
    already have entered it there)."""
    row = await ensure_config(session, box)
    row.enabled = True
    moved = url is not None and url != (row.url or default_url)
    if url is not None:
        row.url = url
    if moved:
        row.station_token_sealed = None
        row.claimed_at = None
        row.active_channels = []
    return row, moved


async def store_token(session: AsyncSession, box: SecretBox, token: str) -> None:
    row = await ensure_config(session, box)
    row.station_token_sealed = box.seal(token)
    row.claimed_at = datetime.now(UTC)


async def unclaim(session: AsyncSession, box: SecretBox) -> CloudConfig:
    """Forget the token and the channels, turn the link off, and issue a new claim secret (the old one
    may have been seen by whoever claimed the station)."""
    row = await ensure_config(session, box)
    row.station_token_sealed = None
    row.claimed_at = None
    row.claim_secret_sealed = box.seal(new_claim_secret())
    row.active_channels = []
    row.enabled = False
    return row


async def set_active_channels(session: AsyncSession, box: SecretBox, channels: list[str]) -> None:
    row = await ensure_config(session, box)
    row.active_channels = channels


async def wipe(session: AsyncSession) -> None:
    """`station_reset`: the row goes; the next use starts from scratch (same chip id, new secret)."""
    await session.execute(delete(CloudConfig))
