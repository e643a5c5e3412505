"""Firmware over real HTTP: streamed uploads with their SHA-256, size limits, permissions per station,
and downloads only through signed links that expire."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from tests.helpers import StationHandle, start_station
from tests.ota.support import image, upload, uploaded
from tests.security.test_limits import raw_request
from waystation.ota import signing
from waystation.ota.signing import refresh_link, signed_path, verify


def _files(station: StationHandle) -> dict[str, list[str]]:
    root = station.settings.data_dir / "firmware"
    return {
        "stored": sorted(p.name for p in root.glob("*.bin")),
        "partial": sorted(p.name for p in (root / "tmp").glob("*")),
    }


async def test_upload_streams_to_disk_with_its_hash(station: StationHandle) -> None:
    owner = await station.owner_headers()
    content = image(2_500_000)  # over the 1 MiB body limit of other routes: this one has its own
    r = await upload(station, owner, content, version="2.1.0", notes="fixes the humidity drift")
    assert r.status_code == 201, r.text
    fw = r.json()
    assert fw["sha256"] == hashlib.sha256(content).hexdigest()
    assert fw["size"] == len(content)
    assert (fw["device_type"], fw["version"], fw["notes"], fw["filename"]) == (
        "climate",
        "2.1.0",
        "fixes the humidity drift",
        "fw.bin",
    )
    assert fw["station_id"] == station.station_id
    stored = station.settings.data_dir / "firmware" / f"{fw['id']}.bin"
    assert stored.read_bytes() == content
    assert _files(station) == {"stored": [f"{fw['id']}.bin"], "partial": []}

    listed = (await station.client.get("/api/v1/firmware", headers=owner)).json()
    assert [f["id"] for f in listed["items"]] == [fw["id"]] and listed["next_cursor"] is None
    got = await station.client.get(f"/api/v1/firmware/{fw['id']}", headers=owner)
    assert got.json() == fw

    again = await upload(station, owner, content, version="2.1.0")
    assert again.status_code == 409 and again.json()["code"] == "FIRMWARE_EXISTS"
    unknown_type = await upload(station, owner, content, version="2.2.0", device_type="toaster")
    assert unknown_type.status_code == 422 and unknown_type.json()["code"] == "DEVICE_TYPE_UNKNOWN"
    bad_version = await upload(station, owner, content, version="../etc")
    assert bad_version.status_code == 422 and bad_version.json()["code"] == "FIRMWARE_UPLOAD_INVALID"
    no_file = await station.client.post(
        "/api/v1/firmware", headers=owner, data={"version": "3.0.0", "device_type": "climate"}
    )
    assert no_file.status_code == 422 and no_file.json()["code"] == "FIRMWARE_UPLOAD_INVALID"
    not_multipart = await station.client.post("/api/v1/firmware", headers=owner, json={"version": "3"})
    assert not_multipart.status_code == 422 and not_multipart.json()["code"] == "FIRMWARE_UPLOAD_INVALID"
    # Refused uploads leave nothing behind.
    assert _files(station) == {"stored": [f"{fw['id']}.bin"], "partial": []}

    audit = await station.client.get("/api/v1/audit", headers=owner, params={"action": "firmware.upload"})
    assert [e["target"] for e in audit.json()["items"]] == [f"firmware:{fw['id']}"]


async def test_size_limits_answer_413(settings_factory: Any) -> None:
    limit = 64 * 1024
    async with start_station(settings_factory(firmware_max_bytes=limit)) as station:
        owner = await station.owner_headers()
        assert (await upload(station, owner, image(limit), version="1.0.0")).status_code == 201
        # Just over the file limit: the body fits the route's request limit, the file check stops it.
        r = await upload(station, owner, image(limit + 1), version="1.0.1")
        assert r.status_code == 413 and r.json()["code"] == "FIRMWARE_TOO_LARGE", r.text
        # Far over: the declared Content-Length is refused before the body is read.
        head = (
            b"POST /api/v1/firmware HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            + f"Authorization: {owner['Authorization']}\r\nContent-Length: {4 * limit}\r\n\r\n".encode()
        )
        status, _, body = await raw_request(station.settings.http_port, head)
        assert status == 413 and orjson.loads(body)["code"] == "PAYLOAD_TOO_LARGE"
        assert len(_files(station)["stored"]) == 1 and _files(station)["partial"] == []


async def test_only_admins_of_the_station_manage_firmware(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Lab B"})
    other = r.json()["id"]
    theirs = await uploaded(station, image(1000), station_id=other)
    ours = await uploaded(station, image(1000), version="2.0.1")

    member = await station.user_headers("mia", "member")
    r = await upload(station, member, image(1000), version="9.0.0")
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    assert (await station.client.get("/api/v1/firmware", headers=member)).status_code == 403

    # Sam is an admin of the default station only: the other station's firmware does not exist for him.
    await station.user_headers("sam", "member")
    r = await station.client.post(
        f"/api/v1/stations/{station.station_id}/members",
        headers=owner,
        json={"username": "sam", "role": "admin"},
    )
    assert r.status_code == 201, r.text
    sam = await station.user_headers("sam", "member")
    listed = (await station.client.get("/api/v1/firmware", headers=sam)).json()["items"]
    assert [f["id"] for f in listed] == [ours["id"]]
    for method, path in [
        ("GET", f"/api/v1/firmware/{theirs['id']}"),
        ("DELETE", f"/api/v1/firmware/{theirs['id']}"),
        ("POST", f"/api/v1/firmware/{theirs['id']}/download-url"),
    ]:
        r = await station.client.request(method, path, headers=sam)
        assert r.status_code == 404 and r.json()["code"] == "FIRMWARE_NOT_FOUND", (method, path, r.text)
    r = await upload(station, sam, image(1000), version="9.0.0", station_id=other)
    assert r.status_code == 404 and r.json()["code"] == "STATION_NOT_FOUND"
    assert (await upload(station, sam, image(1000), version="9.0.0")).status_code == 201


async def test_downloads_need_a_fresh_signed_link(station: StationHandle) -> None:
    owner = await station.owner_headers()
    content = image(200_000)
    fw = await uploaded(station, content)
    r = await station.client.post(f"/api/v1/firmware/{fw['id']}/download-url", headers=owner)
    assert r.status_code == 200, r.text
    link = r.json()
    parts = urlsplit(link["url"])
    assert link["url"].startswith(station.base_url + f"/api/v1/firmware/{fw['id']}/download?")

    # No login: the link is the credential.
    got = await station.client.get(link["url"])
    assert got.status_code == 200, got.text
    assert got.content == content
    assert got.headers["x-firmware-sha256"] == fw["sha256"]
    assert got.headers["content-type"] == "application/octet-stream"

    query = parse_qs(parts.query)
    expires, sig = query["expires"][0], query["sig"][0]
    path = parts.path
    tampered = [
        {"expires": expires, "sig": sig[:-1] + ("0" if sig[-1] != "0" else "1")},
        {"expires": str(int(expires) + 3600), "sig": sig},  # a longer life is not for the asking
        {"expires": expires},
        {},
        {"expires": "soon", "sig": sig},
    ]
    for params in tampered:
        r = await station.client.get(path, params=params)
        assert r.status_code == 403 and r.json()["code"] == "FIRMWARE_URL_INVALID", (params, r.text)
    # Another firmware's id with this signature.
    r = await station.client.get(f"/api/v1/firmware/{fw['id'] + 1}/download", params=query)
    assert r.status_code == 403

    expired_path, _ = signing.signed_path(station.ctx.internal.secret, fw["id"], -1)
    r = await station.client.get(expired_path)
    assert r.status_code == 410 and r.json()["code"] == "FIRMWARE_URL_EXPIRED"
    assert r.headers["content-type"].startswith("application/problem+json")

    viewer = await station.user_headers("vic", "viewer")
    r = await station.client.post(f"/api/v1/firmware/{fw['id']}/download-url", headers=viewer)
    assert r.status_code == 403

    assert (await station.client.delete(f"/api/v1/firmware/{fw['id']}", headers=owner)).status_code == 204
    assert _files(station)["stored"] == []
    r = await station.client.get(link["url"])
    assert r.status_code == 404 and r.json()["code"] == "FIRMWARE_NOT_FOUND"


def test_a_queued_link_is_signed_again_when_the_command_goes_out() -> None:
    """Commands to offline devices wait in the queue; the OTA driver's send hook gives them a fresh link."""
    secret = b"s" * 32
    old_path, _ = signed_path(secret, 7, ttl_seconds=-10)  # already expired
    fresh = refresh_link("http://127.0.0.1:8080" + old_path, secret, ttl_seconds=300)
    assert fresh.startswith("http://127.0.0.1:8080/api/v1/firmware/7/download?")
    query = dict(part.split("=", 1) for part in fresh.split("?", 1)[1].split("&"))
    verify(secret, 7, query["expires"], query["sig"])  # valid now
    assert refresh_link("http://example.invalid/other?x=1", secret, 300) == "http://example.invalid/other?x=1"
