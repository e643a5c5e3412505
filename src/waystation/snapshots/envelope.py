"""The snapshot file: a JSON document encrypted with a passphrase in the age format (pyrage), so that
`age -d` opens it too. Reading tells apart a wrong passphrase, a damaged file and a newer schema.

pyrage runs scrypt (work factor 2^18 and up, as age itself does): about two seconds and a few hundred
MiB per call, so callers on the event loop run these functions in a thread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pyrage import DecryptError, EncryptError, passphrase

from waystation import __version__
from waystation.errors import (
    SnapshotCorrupt,
    SnapshotInvalid,
    SnapshotPassphraseWrong,
    SnapshotSchemaUnsupported,
)

FORMAT = "waystation-snapshot"
SCHEMA_VERSION = 1
AGE_MAGIC = b"age-encryption.org/v1\n"
SCRYPT_STANZA = b"\n-> scrypt "
# What age (rage) reports when no stanza opens with the given passphrase: the only wrong-passphrase case.
WRONG_PASSPHRASE = "Decryption failed"


def new_document(entities: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "station_version": __version__,
        "entities": entities,
    }


def seal(document: dict[str, Any], secret: str) -> bytes:
    try:
        return bytes(passphrase.encrypt(orjson.dumps(document), secret))
    except EncryptError as exc:  # only an empty passphrase gets here; the API and CLI refuse it earlier
        raise SnapshotInvalid("The snapshot could not be encrypted with that passphrase.") from exc


def check_header(data: bytes) -> None:
    """Cheap checks before scrypt runs: an age file, and one encrypted with a passphrase."""
    if not data.startswith(AGE_MAGIC):
        raise SnapshotCorrupt("The file is not in the age format (it does not start with the age header).")
    header_end = data.find(b"\n---")
    if header_end < 0:
        raise SnapshotCorrupt("The file is truncated: its age header is incomplete.")
    if SCRYPT_STANZA not in data[: header_end + 1]:
        raise SnapshotCorrupt("The file is encrypted to an age key, not with a passphrase.")


def open_document(data: bytes, secret: str) -> dict[str, Any]:
    """Decrypt and parse; raises SNAPSHOT_PASSPHRASE_WRONG, SNAPSHOT_CORRUPT or
    SNAPSHOT_SCHEMA_UNSUPPORTED. The entities themselves are validated by `validation.py`."""
    check_header(data)
    try:
        plaintext = passphrase.decrypt(data, secret)
    except DecryptError as exc:
        if str(exc) == WRONG_PASSPHRASE:
            raise SnapshotPassphraseWrong("The passphrase does not open this snapshot.") from exc
        raise SnapshotCorrupt(f"The file is damaged or truncated ({exc}).") from exc
    try:
        document = orjson.loads(plaintext)
    except orjson.JSONDecodeError as exc:
        raise SnapshotCorrupt("The decrypted content is not JSON.") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotInvalid(f"The decrypted content is not a {FORMAT} document.")
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SnapshotInvalid("The snapshot has no valid schema_version.")
    if version > SCHEMA_VERSION:
        raise SnapshotSchemaUnsupported(
            f"The snapshot has schema version {version}; this Waystation ({__version__}) reads up to "
            f"{SCHEMA_VERSION}. Upgrade Waystation, then import it."
        )
    return document
