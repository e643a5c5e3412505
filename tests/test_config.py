"""Settings per PROTOCOLS §1: environment prefix, TOML file, URL parsing, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from waystation.config import MqttEndpoint, Settings, load_settings


def test_defaults_match_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "WAYSTATION_DATA_DIR",
        "WAYSTATION_MQTT_URL",
        "WAYSTATION_HTTP_PORT",
        "WAYSTATION_DATABASE_URL",
    ):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.data_dir == Path("./var")
    assert s.mqtt_url == "embedded://127.0.0.1:1883"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.broker_admin == "auto"
    assert s.heartbeat_timeout_seconds == 180
    assert s.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert s.resolved_database_url.endswith("var/waystation.db")


def test_environment_prefix_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WAYSTATION_HTTP_PORT", "9090")
    monkeypatch.setenv("WAYSTATION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WAYSTATION_MQTT_URL", "mqtt://dev:s3cret@broker.local:1884")
    s = load_settings()
    assert s.http_port == 9090
    assert s.data_dir == tmp_path
    assert s.mqtt == MqttEndpoint(False, "broker.local", 1884, False, "dev", "s3cret")
    assert "s3cret" not in s.mqtt.display()


def test_toml_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        'http_port = 7000\nheartbeat_timeout_seconds = 60\nmqtt_url = "embedded://127.0.0.1:18999"\n'
    )
    monkeypatch.delenv("WAYSTATION_HTTP_PORT", raising=False)
    monkeypatch.setenv("WAYSTATION_HEARTBEAT_TIMEOUT_SECONDS", "30")
    s = load_settings(cfg)
    assert s.http_port == 7000
    assert s.heartbeat_timeout_seconds == 30
    assert s.mqtt.embedded and s.mqtt.port == 18999


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize("url", ["http://x", "tcp://1.2.3.4", "broker:1883"])
def test_bad_mqtt_url_is_rejected(url: str) -> None:
    with pytest.raises(ValidationError, match="MQTT URL"):
        Settings(mqtt_url=url)


def test_mqtts_defaults_to_port_8883() -> None:
    e = MqttEndpoint.parse("mqtts://broker.example")
    assert (e.tls, e.port, e.embedded) == (True, 8883, False)


def test_data_dir_is_created_on_demand(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "deep" / "data")
    s.ensure_data_dir()
    assert (tmp_path / "deep" / "data" / "logs").is_dir()


def test_every_setting_is_documented() -> None:
    """docs/configuration.md (and docs/scaling.md for `CLUSTER_*`) name every setting, so none is a
    secret knob. A row may name two as `WAYSTATION_A_B_MIN` / `_B_MAX`."""
    docs = Path(__file__).parent.parent / "docs"
    text = (docs / "configuration.md").read_text(encoding="utf-8")
    text += (docs / "scaling.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(?:WAYSTATION_)?([A-Z][A-Z0-9_]+)`", text))
    for full, short in re.findall(r"`WAYSTATION_([A-Z0-9_]+)` / `_([A-Z0-9_]+)`", text):
        first = short.split("_")[0]
        if f"_{first}_" in f"_{full}":
            named.add(f"_{full}".split(f"_{first}_")[0].lstrip("_") + f"_{short}")
    missing = sorted(
        f"WAYSTATION_{name.upper()}" for name in Settings.model_fields if name.upper() not in named
    )
    assert missing == [], f"settings missing from docs/configuration.md: {missing}"
