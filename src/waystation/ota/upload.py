"""Receiving a firmware upload: multipart/form-data streamed straight to a file under the data directory.

Starlette's form parser (`request.form()`) spools files through a temporary file and then hands us the
whole part; ours writes each chunk as it arrives to `<data_dir>/firmware/tmp/`, hashes it on the way
and stops at the size limit, so an image is never held in memory and never copied twice. The parsing
itself is python-multipart's; only the glue is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from io import BufferedWriter
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from waystation.config import Settings
from waystation.errors import FirmwareTooLarge, FirmwareUploadInvalid

if TYPE_CHECKING:  # a typing-only name in python-multipart
    from python_multipart.multipart import MultipartCallbacks

UPLOAD_PATH = "/api/v1/firmware"
FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096  # text fields (version, device_type, notes); notes are at most 2000 characters
MAX_PARTS = 16
# Room for the text fields and part headers on top of the image itself, for the request body limit.
FORM_OVERHEAD_BYTES = 64 * 1024


def firmware_body_limits(settings: Settings) -> dict[str, int]:
    """The request body limit of the upload route (BodySizeLimitMiddleware's `by_path`): the firmware size
    limit plus the form around it, instead of the 1 MiB default every other route has."""
    return {UPLOAD_PATH: settings.firmware_max_bytes + FORM_OVERHEAD_BYTES}


def firmware_dir(settings: Settings) -> Path:
    return settings.data_dir / "firmware"


@dataclass
class Upload:
    """What arrived: the text fields, and the file (already on disk, hashed) if there was one."""

    fields: dict[str, str]
    filename: str | None
    temp_path: Path | None
    size: int
    sha256: str

    def discard(self) -> None:
        if self.temp_path is not None:
            self.temp_path.unlink(missing_ok=True)


@dataclass
class _Form:
    """python-multipart's callbacks are synchronous: they only collect, the caller writes."""

    fields: dict[str, bytearray] = field(default_factory=dict)
    filename: str | None = None
    file_seen: bool = False
    file_chunks: list[bytes] = field(default_factory=list)
    error: str | None = None
    ended: bool = False
    parts: int = 0
    _header_name: bytes = b""
    _header_value: bytes = b""
    _disposition: bytes = b""
    _name: str | None = None
    _in_file: bool = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _fail(self, message: str) -> None:
        self.error = self.error or message

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self._fail(f"At most {MAX_PARTS} form fields are accepted.")
        self._disposition, self._name, self._in_file = b"", None, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            self._fail("Every form field needs a name (Content-Disposition).")
            return
        name = raw_name.decode("utf-8", "replace")
        self._name = name
        if name == FILE_FIELD:
            if self.file_seen:
                self._fail("Send one 'file' field only.")
                return
            self.file_seen, self._in_file = True, True
            raw_filename = options.get(b"filename")
            self.filename = raw_filename.decode("utf-8", "replace")[:255] if raw_filename else None
        elif b"filename" in options:
            self._fail(f"Only the 'file' field may carry a file, not {name[:40]!r}.")
        else:
            self.fields[name] = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None or self._name is None:
            return
        if self._in_file:
            self.file_chunks.append(data[start:end])
            return
        value = self.fields[self._name]
        if len(value) + (end - start) > MAX_FIELD_BYTES:
            self._fail(f"The form field {self._name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes.")
            return
        value += data[start:end]

    def _end(self) -> None:
        self.ended = True

    def take_file_data(self) -> bytes:
        data = b"".join(self.file_chunks)
        self.file_chunks.clear()
        return data


def _open(path: Path) -> BufferedWriter:
    # Owner-only: firmware may be proprietary, and the download route is the way out.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _write(fh: BufferedWriter, digest: hashlib._Hash, data: bytes) -> None:
    fh.write(data)
    digest.update(data)


def _finish(fh: BufferedWriter) -> None:
    fh.flush()
    os.fsync(fh.fileno())  # the row that points at the file must not outlive a power cut without it
    fh.close()


async def receive_upload(request: Request, tmp_dir: Path, max_file_bytes: int) -> Upload:
    """Stream the request's multipart body; the file part goes to a new file in `tmp_dir`.

    Raises 422 `FIRMWARE_UPLOAD_INVALID` for a body that is not proper multipart/form-data and 413
    `FIRMWARE_TOO_LARGE` as soon as the file grows past `max_file_bytes`; the partial file is removed.
    Disk writes and hashing run in a worker thread: on an SD card a write can stall for a long time.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise FirmwareUploadInvalid("Send the firmware as multipart/form-data with a 'file' field.")
    form = _Form()
    parser = MultipartParser(boundary, form.callbacks())
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
    temp_path = tmp_dir / f"{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    size = 0
    fh: BufferedWriter | None = None
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise FirmwareUploadInvalid("The body is not valid multipart/form-data.") from exc
            if form.error is not None:
                raise FirmwareUploadInvalid(form.error)
            data = form.take_file_data()
            if not data:
                continue
            size += len(data)
            if size > max_file_bytes:
                raise FirmwareTooLarge(
                    f"The firmware file is larger than the limit of {max_file_bytes} bytes."
                )
            if fh is None:
                fh = await asyncio.to_thread(_open, temp_path)
            await asyncio.to_thread(_write, fh, digest, data)
        try:
            parser.finalize()
        except FormParserError as exc:
            raise FirmwareUploadInvalid("The body is not valid multipart/form-data.") from exc
        if not form.ended:
            raise FirmwareUploadInvalid("The multipart body ended before its closing boundary.")
        if fh is not None:
            await asyncio.to_thread(_finish, fh)
    except BaseException:
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        temp_path.unlink(missing_ok=True)
        raise
    fields = {name: bytes(value).decode("utf-8", "replace") for name, value in form.fields.items()}
    return Upload(
        fields=fields,
        filename=form.filename,
        temp_path=temp_path if fh is not None else None,
        size=size,
        sha256=digest.hexdigest(),
    )
