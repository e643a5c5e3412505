"""The operations log over HTTP: entries other slices write, filters and paging, manual notes, station
visibility, the `log.entry` event and retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import StationHandle, start_station, wait_for
from tests.realtime.test_sse import read_events
from waystation.devices.service import encode_cursor
from waystation.oplog import service as oplog

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def station(settings_factory) -> AsyncIterator[StationHandle]:  # type: ignore[no-untyped-def]
    """The entries below have fixed dates in the past: keep retention (90 days by default) from purging
    them when its first run comes late on a busy machine."""
    async with start_station(settings_factory(log_retention_days=36500)) as handle:
        yield handle


async def _write(station: StationHandle, *entries: dict[str, Any]) -> None:
    """Entries as other slices (rules, OTA, the device runtime) write them: through `write_entry`."""
    async with station.ctx.db.session() as session:
        for entry in entries:
            entry = dict(entry)
            await oplog.write_entry(
                session,
                entry.pop("level"),
                entry.pop("source"),
                entry.pop("message"),
                station_id=entry.pop("station_id", station.station_id),
                **entry,
            )


async def _list(
    station: StationHandle, query: str = "", headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    r = await station.client.get(f"/api/v1/log{query}", headers=headers or await station.owner_headers())
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _seed(station: StationHandle) -> None:
    await _write(
        station,
        {
            "level": "info",
            "source": "device",
            "message": "gh-1 came online",
            "related": {"device_id": "gh-1"},
            "ts": T0,
        },
        {
            "level": "warning",
            "source": "rule",
            "message": "Greenhouse too warm (31 °C)",
            "related": {"device_id": "gh-1", "rule_id": 4},
            "ts": T0 + timedelta(minutes=1),
        },
        {"level": "debug", "source": "system", "message": "retention ran", "ts": T0 + timedelta(minutes=2)},
        {
            "level": "error",
            "source": "ota",
            "message": "OTA of gh-2 failed: 100% written, checksum wrong",
            "related": {"device_id": "gh-2", "ota_job_id": 9},
            "ts": T0 + timedelta(minutes=3),
        },
        {
            "level": "info",
            "source": "rule",
            "message": "greenhouse back to normal",
            "related": {"device_id": "gh-1", "rule_id": 4},
            "ts": T0 + timedelta(minutes=4),
        },
    )


async def test_entries_are_listed_newest_first_with_their_related_ids(station: StationHandle) -> None:
    await _seed(station)
    items = await _list(station)
    assert [i["message"] for i in items] == [
        "greenhouse back to normal",
        "OTA of gh-2 failed: 100% written, checksum wrong",
        "retention ran",
        "Greenhouse too warm (31 °C)",
        "gh-1 came online",
    ]
    warm = items[3]
    assert warm["level"] == "warning" and warm["source"] == "rule"
    assert warm["related"] == {"device_id": "gh-1", "rule_id": 4}
    assert warm["station_id"] == station.station_id and warm["actor"] is None
    assert datetime.fromisoformat(warm["ts"]) == T0 + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "?level=warning",
            ["OTA of gh-2 failed: 100% written, checksum wrong", "Greenhouse too warm (31 °C)"],
        ),
        ("?level=error", ["OTA of gh-2 failed: 100% written, checksum wrong"]),
        ("?source=rule", ["greenhouse back to normal", "Greenhouse too warm (31 °C)"]),
        ("?device_id=gh-1", ["greenhouse back to normal", "Greenhouse too warm (31 °C)", "gh-1 came online"]),
        ("?device_id=gh-1&level=warning", ["Greenhouse too warm (31 °C)"]),
        (
            "?since=2026-03-01T12:01:00Z&until=2026-03-01T12:03:00Z",
            ["retention ran", "Greenhouse too warm (31 °C)"],
        ),
        (
            "?since=2026-03-01T12:03:00%2B00:00",
            ["greenhouse back to normal", "OTA of gh-2 failed: 100% written, checksum wrong"],
        ),
        ("?q=GREENHOUSE", ["greenhouse back to normal", "Greenhouse too warm (31 °C)"]),
        (
            "?q=100%25",
            ["OTA of gh-2 failed: 100% written, checksum wrong"],
        ),  # % is a character, not a wildcard
        ("?q=_", []),
        ("?source=user", []),
    ],
)
async def test_filters(station: StationHandle, query: str, expected: list[str]) -> None:
    await _seed(station)
    assert [i["message"] for i in await _list(station, query)] == expected


async def test_pages_follow_the_cursor_without_gaps_or_repeats(station: StationHandle) -> None:
    # Two entries share a timestamp: the cursor must still split them correctly.
    await _seed(station)
    await _write(
        station, {"level": "info", "source": "device", "message": "twin", "ts": T0 + timedelta(minutes=2)}
    )
    everything = [i["id"] for i in await _list(station)]
    seen: list[int] = []
    cursor = None
    while True:
        r = await station.client.get(
            "/api/v1/log?limit=2" + (f"&cursor={cursor}" if cursor else ""),
            headers=await station.owner_headers(),
        )
        assert r.status_code == 200
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything and len(seen) == 6

    owner = await station.owner_headers()
    for cursor in ("garbage", encode_cursor("1", str(2**40)), encode_cursor(str(10**30), "1")):
        r = await station.client.get(f"/api/v1/log?cursor={cursor}", headers=owner)
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
    r = await station.client.get(
        "/api/v1/log?since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z", headers=owner
    )
    assert r.status_code == 422 and r.json()["code"] == "INVALID_TIME_RANGE"
    r = await station.client.get("/api/v1/log?level=loud", headers=owner)
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"


async def test_members_write_notes_and_viewers_only_read(station: StationHandle) -> None:
    await station.create_device("gh-1", "climate")
    member = await station.user_headers("mia", "member")
    viewer = await station.user_headers("vic", "viewer")
    got: list[dict[str, Any]] = []
    reader = asyncio.create_task(
        read_events(station.client, "/api/v1/events/stream?types=log.*", viewer, got)
    )
    try:
        await asyncio.sleep(0.3)
        r = await station.client.post(
            "/api/v1/log",
            headers=member,
            json={"message": "Replaced the filter in zone 2", "level": "warning", "device_id": "gh-1"},
        )
        assert r.status_code == 201, r.text
        note = r.json()
        assert note["source"] == "user" and note["actor"] == "user:mia" and note["level"] == "warning"
        assert note["related"] == {"device_id": "gh-1"} and note["station_id"] == station.station_id
        # Live views hear about it at once.
        await wait_for(lambda: [e for e in got if e["event"] == "log.entry"], message="log.entry event")
        assert (
            got[0]["data"]["id"] == note["id"]
            and got[0]["data"]["message"] == "Replaced the filter in zone 2"
        )
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    listed = await _list(station, "?source=user&device_id=gh-1", viewer)
    assert [i["id"] for i in listed] == [note["id"]]
    r = await station.client.post("/api/v1/log", headers=viewer, json={"message": "hello"})
    assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_ROLE"
    for body in ({"message": ""}, {"message": "x" * 2001}, {"message": "hi", "source": "rule"}):
        r = await station.client.post("/api/v1/log", headers=member, json=body)
        assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED"
    audit = (
        await station.client.get("/api/v1/audit?action=log.note", headers=await station.owner_headers())
    ).json()
    assert [a["actor"] for a in audit["items"]] == ["user:mia"]


async def test_callers_see_only_their_stations_entries(station: StationHandle) -> None:
    owner = await station.owner_headers()
    r = await station.client.post("/api/v1/stations", headers=owner, json={"name": "Lab B"})
    b = r.json()["id"]
    await station.create_device("b-dev", "climate", station_id=b)
    await _write(
        station,
        {"level": "info", "source": "device", "message": "at A", "ts": T0},
        {"level": "info", "source": "device", "message": "at B", "station_id": b, "ts": T0},
        {"level": "error", "source": "system", "message": "installation-wide", "station_id": None, "ts": T0},
    )
    alice = await station.user_headers("alice", "member")  # member of the default station only
    assert [i["message"] for i in await _list(station, "", alice)] == ["at A"]
    assert [i["message"] for i in await _list(station, f"?station_id={b}", alice)] == []
    assert {i["message"] for i in await _list(station, "", owner)} == {"at A", "at B", "installation-wide"}
    assert [i["message"] for i in await _list(station, f"?station_id={b}", owner)] == ["at B"]

    r = await station.client.post("/api/v1/log", headers=alice, json={"message": "x", "station_id": b})
    assert r.status_code == 404 and r.json()["code"] == "STATION_NOT_FOUND"
    # Naming another station's device reads like naming none at all.
    r = await station.client.post("/api/v1/log", headers=alice, json={"message": "x", "device_id": "b-dev"})
    assert r.status_code == 404 and r.json()["code"] == "DEVICE_NOT_FOUND"
    r = await station.client.post("/api/v1/log", headers=owner, json={"message": "x", "station_id": "nope"})
    assert r.status_code == 404 and r.json()["code"] == "STATION_NOT_FOUND"


async def test_write_entry_refuses_unknown_levels_and_sources(station: StationHandle) -> None:
    async with station.ctx.db.session() as session:
        with pytest.raises(ValueError, match="level"):
            await oplog.write_entry(session, "fatal", "rule", "x")
        with pytest.raises(ValueError, match="source"):
            await oplog.write_entry(session, "info", "Not A Source", "x")
        long = await oplog.write_entry(session, "info", "rule", "y" * 5000, station_id=station.station_id)
        assert len(long.message) == 2000


async def test_old_entries_are_purged_in_batches(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(
        log_retention_days=1, log_retention_interval_seconds=0.2, log_retention_batch_rows=2
    )
    async with start_station(settings) as station:
        now = datetime.now(UTC)
        old = [
            {
                "level": "info",
                "source": "system",
                "message": f"old {i}",
                "ts": now - timedelta(days=2, minutes=i),
            }
            for i in range(5)
        ]
        await _write(station, *old, {"level": "info", "source": "system", "message": "fresh", "ts": now})

        async def only_fresh_left() -> bool:
            return [i["message"] for i in await _list(station)] == ["fresh"]

        await wait_for(only_fresh_left, timeout=10, message="old log entries purged")
