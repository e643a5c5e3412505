"""Short-lived signed firmware download links.

    GET /api/v1/firmware/{id}/download?expires=<unix seconds>&sig=<hex>

`sig` is HMAC-SHA256 with the station's internal secret (auth/internal.py) over
"firmware-download\\n{id}\\n{expires}". The first line keeps these signatures apart from the signed
internal calls that use the same secret. Devices need no account to download: the link is the credential,
so it lives only `WAYSTATION_FIRMWARE_URL_TTL_SECONDS` (5 minutes by default).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from urllib.parse import urlencode

from waystation.errors import FirmwareUrlExpired, FirmwareUrlInvalid

_PURPOSE = b"firmware-download"


def signature(secret: bytes, firmware_id: int, expires: int) -> str:
    message = b"\n".join([_PURPOSE, str(firmware_id).encode(), str(expires).encode()])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_path(
    secret: bytes, firmware_id: int, ttl_seconds: float, now: float | None = None
) -> tuple[str, int]:
    """The path and query of a download link valid for `ttl_seconds`, and its expiry (Unix seconds)."""
    expires = int((time.time() if now is None else now) + ttl_seconds)
    query = urlencode({"expires": expires, "sig": signature(secret, firmware_id, expires)})
    return f"/api/v1/firmware/{firmware_id}/download?{query}", expires


def verify(secret: bytes, firmware_id: int, expires: str | None, sig: str | None) -> None:
    """Raise 403 `FIRMWARE_URL_INVALID` for a missing or wrong signature, 410 `FIRMWARE_URL_EXPIRED` for a
    genuine link past its time. The signature is checked first, so an edited `expires` is a 403."""
    if not expires or not sig:
        raise FirmwareUrlInvalid("The link needs its 'expires' and 'sig' parameters; ask for a new one.")
    try:
        expires_at = int(expires)
    except ValueError as exc:
        raise FirmwareUrlInvalid("'expires' must be Unix seconds.") from exc
    expected = signature(secret, firmware_id, expires_at)
    if not hmac.compare_digest(expected.encode(), sig.lower().encode()):
        raise FirmwareUrlInvalid("The link's signature does not match.")
    if time.time() > expires_at:
        raise FirmwareUrlExpired("The download link has expired; ask for a new one.")


def refresh_link(url: str, secret: bytes, ttl_seconds: float) -> str:
    """The same download link with a new expiry and signature (for a command sent later than planned).
    Anything that is not one of our firmware links is returned unchanged."""
    match = _LINK.match(url)
    if match is None:
        return url
    path, _ = signed_path(secret, int(match.group(2)), ttl_seconds)
    return match.group(1) + path


_LINK = re.compile(r"^(.*)/api/v1/firmware/(\d{1,18})/download\?.*$")
