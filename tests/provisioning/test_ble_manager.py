"""The provisioning manager's own bookkeeping, with the bridge child replaced by what it would send: writes
one at a time and matched by id, the candidate cap, and provisionings that end when the manager stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from waystation.bus import Bus
from waystation.config import Settings
from waystation.db import Database
from waystation.provisioning.ble import manager as manager_module
from waystation.provisioning.ble.jobs import Provisioning
from waystation.provisioning.ble.manager import ProvisioningManager
from waystation.provisioning.ble.refusals import BrokerLog

A = "24:0A:C4:3F:2A:01"
B = "24:0A:C4:7B:10:02"


class Harness:
    """A manager whose bridge is "ready" and whose lines to the bridge are recorded instead of sent."""

    def __init__(self, tmp_path: Path, write_timeout: float = 5.0) -> None:
        settings = Settings(data_dir=tmp_path, ble_simulate=True, ble_write_timeout_seconds=write_timeout)
        # The database is never connected to: nothing here gets as far as recording an outcome.
        self.manager = ProvisioningManager(settings, Database(settings), Bus(), None, BrokerLog(None))
        self.sent: list[dict[str, Any]] = []
        self.manager._ready = True
        self.manager._send = self._record  # type: ignore[method-assign]

    def _record(self, message: dict[str, Any]) -> bool:
        self.sent.append(message)
        return True

    def writes(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["event"] == "connect_and_write"]

    def answer(self, write: dict[str, Any], ok: bool, **extra: Any) -> None:
        self.manager._on_message({"event": "write_result", "address": write["address"], "ok": ok, **extra})


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def test_a_late_answer_to_a_timed_out_write_does_not_answer_the_retry(tmp_path: Path) -> None:
    h = Harness(tmp_path, write_timeout=0.3)
    assert await h.manager._write(A, {"ssid": "x"}) == (False, "the bridge did not answer within 0.3s")
    retry = asyncio.create_task(h.manager._write(A, {"ssid": "y"}))
    await wait_for(lambda: len(h.writes()) == 2, message="the retry sent")
    first, second = h.writes()
    assert first["id"] and second["id"] and first["id"] != second["id"]
    h.answer(first, ok=True, id=first["id"])  # the bridge finally finishes the abandoned write
    h.answer(second, ok=False, id=second["id"], error="GATT write failed")
    assert await retry == (False, "GATT write failed")


async def test_writes_go_to_the_bridge_one_at_a_time(harness: Harness) -> None:
    h = harness
    first = asyncio.create_task(h.manager._write(A, {"ssid": "x"}))
    second = asyncio.create_task(h.manager._write(B, {"ssid": "x"}))
    await wait_for(lambda: h.writes(), message="the first write sent")
    for _ in range(20):
        await asyncio.sleep(0)  # every task gets to run: the second must still be queued
    assert [w["address"] for w in h.writes()] == [A]
    assert h.manager.status()["provisionings_running"] == 0  # bare writes, no jobs
    h.answer(h.writes()[0], ok=True, id=h.writes()[0]["id"])
    assert await first == (True, None)
    await wait_for(lambda: len(h.writes()) == 2, message="the second write sent after the first ended")
    # A bridge that echoes no id is matched by address: only one write is ever outstanding.
    h.answer({"address": "24:0a:c4:7b:10:02"}, ok=True)
    assert await second == (True, None)


async def test_the_candidate_cache_is_capped_dropping_the_least_recently_heard(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "MAX_CANDIDATES", 4)
    mgr = harness.manager
    feed = mgr.connect(None)

    def heard(n: int) -> None:
        mgr._on_message({"event": "discovered", "address": f"AA:00:00:00:00:{n:02X}", "rssi": -50})

    for n in range(4):
        heard(n)
    heard(0)  # heard again: now the most recent
    heard(4)
    heard(5)
    assert list(mgr.candidates) == [f"AA:00:00:00:00:{n:02X}" for n in (3, 0, 4, 5)]
    lost = [m["address"] for m in feed._queue if m["type"] == "candidate_lost"]
    assert lost == ["AA:00:00:00:00:01", "AA:00:00:00:00:02"]


async def test_the_real_cap_holds_under_a_flood_of_addresses(harness: Harness) -> None:
    mgr = harness.manager
    mgr.connect(None)
    for n in range(manager_module.MAX_CANDIDATES + 100):
        mgr._on_message(
            {"event": "discovered", "address": f"AA:BB:00:00:{n >> 8:02X}:{n & 255:02X}", "rssi": -60}
        )
    assert len(mgr.candidates) == manager_module.MAX_CANDIDATES == 256


async def test_provisionings_cut_off_by_a_stopping_manager_end_failed(harness: Harness) -> None:
    mgr = harness.manager
    writing = Provisioning(address=A, device_id="climate-1", station_id="st", actor="user:o")
    mgr.start(writing, {"ssid": "x"})
    await wait_for(lambda: harness.writes(), message="the write sent")
    never_ran = Provisioning(address=B, device_id="climate-2", station_id="st", actor="user:o")
    mgr.start(never_ran, {"ssid": "x"})  # cancelled below before its task ever runs
    assert mgr.busy(A) and mgr.busy(B)
    feed = mgr.connect(None)
    await mgr.close()  # what run()'s finally does when the manager crashes or the station stops
    assert writing.state == "failed" and writing.reason == "write_failed"
    assert writing.detail is not None and "interrupted" in writing.detail
    assert never_ran.state == "failed"
    assert not mgr.busy(A) and not mgr.busy(B)  # a supervisor's restart can provision them again
    results = [m for m in feed._queue if m["type"] == "result"]
    assert {m["provisioning_id"] for m in results} == {writing.id, never_ran.id}
    assert mgr.status()["provisionings_running"] == 0


def test_reserving_an_address_makes_it_busy_until_released(harness: Harness) -> None:
    mgr = harness.manager
    assert mgr.reserve(A.lower())
    assert mgr.busy(A) and not mgr.reserve(A)
    mgr.release(A)
    assert not mgr.busy(A) and mgr.reserve(A)
