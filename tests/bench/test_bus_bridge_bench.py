"""Smoke run of bench/bus_bridge.py: both bus transports (PostgreSQL LISTEN/NOTIFY, the broker at QoS 1)
measured on a tiny load, every event delivered once. PostgreSQL only (the bridge needs LISTEN/NOTIFY)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, TEST_DB

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(TEST_DB != "postgresql", reason="the bus bridge needs WAYSTATION_TEST_DB=postgresql"),
    pytest.mark.timeout(90),
]


def test_quick_run_reports_both_transports_without_loss(tmp_path: Path) -> None:
    output = tmp_path / "bus-bridge.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bus_bridge.py"),
            "--quick",
            "--transports",
            "postgresql,mqtt_qos1",
            "--pg-url",
            PG_ADMIN_URL,
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(output.read_text())
    assert set(result["transports"]) == {"postgresql", "mqtt_qos1"}
    for name, transport in result["transports"].items():
        for phase in ("latency_phase", "throughput_phase"):
            figures = transport[phase]
            assert figures["events_sent"] > 0, (name, phase)
            assert figures["lost"] == 0, (name, phase, figures)
            assert figures["duplicates"] == 0, (name, phase, figures)
            assert figures["all_arrived"], (name, phase, figures)
        assert transport["latency_phase"]["latency"]["p99_ms"] is not None
        assert transport["throughput_phase"]["events_per_second"] > 0
    assert result["conclusion"]
    assert result["postgresql"] and result["machine"]["cpus"]
