"""Choosing the broker-admin mode, the station's logins, the adapter, and the dynsec mapping rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.broker.dynsec_broker import init_dynsec_file
from waystation.broker.acl import STATION_USERNAME, AclRule
from waystation.broker.adapters.dynsec import hash_password, password_matches, role_acls
from waystation.broker.adapters.emqx import EmqxSessionKicker
from waystation.broker.adapters.files import FilesAdapter
from waystation.broker.sync import make_adapter, plan_broker, resolve_mode, station_account_rules
from waystation.config import Settings
from waystation.errors import BrokerAdminMisconfigured


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_auto_mode_follows_the_broker(tmp_path: Path) -> None:
    auto = _settings(tmp_path)
    assert resolve_mode(auto, "mosquitto", "/x/mosquitto_dynamic_security.so") == "mosquitto-dynsec"
    # Every managed broker enforces accounts by default: without the plugin through account files.
    assert resolve_mode(auto, "mosquitto", None) == "password-file"
    assert resolve_mode(auto, "amqtt", None) == "password-file"
    assert resolve_mode(_settings(tmp_path, mqtt_url="mqtt://broker.lan"), None, None) == "none"


def test_password_file_plan_for_the_managed_brokers(tmp_path: Path) -> None:
    no_plugin = _settings(tmp_path, broker_dynsec_plugin=str(tmp_path / "missing.so"))
    for kind in ("mosquitto", "amqtt"):
        plan = plan_broker(no_plugin, kind)
        assert plan.mode == "password-file" and plan.files is not None and plan.files.kind == kind
        assert plan.station_login is not None and plan.station_login.username == STATION_USERNAME
        assert plan.manage_station and not plan.warnings
        assert isinstance(make_adapter(no_plugin, plan), FilesAdapter)
    # The same generated station password as with dynamic security.
    key = (tmp_path / "keys" / "broker-station.key").read_text().strip()
    assert plan.station_login.password == key


def test_explicit_none_on_a_managed_broker_is_an_opt_in_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="waystation.broker.sync")
    plan = plan_broker(_settings(tmp_path, broker_admin="none"), "amqtt")
    assert plan.mode == "none" and plan.files is None
    assert plan.warnings and "anonymous" in plan.warnings[0]
    assert "WAYSTATION_BROKER_ADMIN=none" in caplog.text and "anonymous" in caplog.text


def test_impossible_modes_are_clear_errors(tmp_path: Path) -> None:
    dynsec = _settings(tmp_path, broker_admin="mosquitto-dynsec")
    with pytest.raises(BrokerAdminMisconfigured, match="amqtt"):
        resolve_mode(dynsec, "amqtt", None)
    with pytest.raises(BrokerAdminMisconfigured, match="WAYSTATION_BROKER_DYNSEC_PLUGIN"):
        resolve_mode(dynsec, "mosquitto", None)
    external = _settings(tmp_path, broker_admin="mosquitto-dynsec", mqtt_url="mqtt://broker.lan")
    with pytest.raises(BrokerAdminMisconfigured, match="WAYSTATION_BROKER_ADMIN_USERNAME"):
        resolve_mode(external, None, None)
    emqx = _settings(tmp_path, broker_admin="emqx", mqtt_url="mqtt://emqx.lan")
    with pytest.raises(BrokerAdminMisconfigured, match=r"(?i)emqx"):
        make_adapter(emqx, plan_broker(emqx, None))
    files = _settings(tmp_path, broker_admin="password-file", mqtt_url="mqtt://broker.lan")
    with pytest.raises(BrokerAdminMisconfigured, match="embedded"):
        resolve_mode(files, None, None)
    # emqx-http with half of the API settings: an error, not a silent "no kick".
    half = _settings(tmp_path, broker_admin="emqx-http", mqtt_url="mqtt://emqx.lan", emqx_api_url="http://e")
    with pytest.raises(BrokerAdminMisconfigured, match="WAYSTATION_EMQX_API_KEY"):
        make_adapter(half, plan_broker(half, None))


def test_emqx_http_kicks_through_the_api_when_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="waystation.broker.sync")
    bare = _settings(tmp_path, broker_admin="emqx-http", mqtt_url="mqtt://st:pw@emqx.lan")
    plan = plan_broker(bare, None)
    assert make_adapter(bare, plan) is None
    assert plan.warnings and "WAYSTATION_EMQX_API_URL" in plan.warnings[0]
    assert "not disconnected" in caplog.text and "WAYSTATION_EMQX_API_URL" in caplog.text
    api = _settings(
        tmp_path,
        broker_admin="emqx-http",
        mqtt_url="mqtt://st:pw@emqx.lan",
        emqx_api_url="http://emqx.lan:18083",
        emqx_api_key="k",
        emqx_api_secret="s",
    )
    plan = plan_broker(api, None)
    kicker = make_adapter(api, plan)
    assert isinstance(kicker, EmqxSessionKicker) and not kicker.manages_accounts and not plan.warnings


def test_emqx_plan_manages_the_station_account_with_least_privilege(tmp_path: Path) -> None:
    settings = _settings(tmp_path, broker_admin="emqx", mqtt_url="mqtt://waystation:pw@emqx.lan")
    plan = plan_broker(settings, None)
    assert plan.manage_station and plan.station_login is not None
    assert plan.station_login.username == "waystation" and "waystation" in plan.protected
    rules = {(r.action, r.topic) for r in station_account_rules(("zigbee2mqtt/#",), "emqx")}
    assert rules == {
        ("publish", "station/+/device/+/command"),
        ("publish", "station/+/device/+/handshake/ack"),
        ("subscribe", "station/#"),
        ("subscribe", "zigbee2mqtt/#"),
    }


def test_external_mosquitto_keeps_the_url_account_and_protects_it(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        broker_admin="mosquitto-dynsec",
        mqtt_url="mqtt://station:s3cret@broker.lan:1883",
        broker_admin_username="root",
        broker_admin_password="adminpw",
        broker_protected_usernames="grafana, node-red",
    )
    plan = plan_broker(settings, None)
    assert plan.mode == "mosquitto-dynsec" and plan.managed is None and plan.manage_station
    assert plan.station_login is not None and plan.station_login.username == "station"
    assert plan.admin_login is not None and plan.admin_login.username == "root"
    assert {"station", "root", "grafana", "node-red", STATION_USERNAME} <= plan.protected
    assert "s3cret" not in repr(plan) and "adminpw" not in repr(settings)
    # The same account for both: its roles are never replaced.
    same = _settings(
        tmp_path,
        broker_admin="mosquitto-dynsec",
        mqtt_url="mqtt://root:adminpw@broker.lan",
        broker_admin_username="root",
        broker_admin_password="adminpw",
    )
    assert not plan_broker(same, None).manage_station
    external = _settings(tmp_path, mqtt_url="mqtt://broker.lan")
    assert make_adapter(external, plan_broker(external, None)) is None


def test_embedded_plan_generates_lasting_passwords(tmp_path: Path) -> None:
    settings = _settings(tmp_path, broker_dynsec_plugin=__file__)  # any existing file stands in for the .so
    first = plan_broker(settings, "mosquitto")
    second = plan_broker(settings, "mosquitto")
    assert first.managed is not None and first.station_login is not None and first.admin_login is not None
    assert second.station_login is not None and second.admin_login is not None
    assert first.station_login.password == second.station_login.password
    assert first.admin_login.password == second.admin_login.password
    assert first.station_login.password != first.admin_login.password
    first.managed.prepare()
    state = json.loads(first.managed.config_file.read_text())
    station = next(c for c in state["clients"] if c["username"] == STATION_USERNAME)
    assert password_matches(station, first.station_login.password)


def test_password_hashes_are_the_ones_mosquitto_makes(tmp_path: Path) -> None:
    path = tmp_path / "dynsec.json"
    init_dynsec_file(path, "admin", "the-password")
    entry = json.loads(path.read_text())["clients"][0]
    assert password_matches(entry, "the-password") and not password_matches(entry, "other")
    assert password_matches(hash_password("x"), "x")


def test_role_acls_grant_receiving_what_may_be_subscribed() -> None:
    rules = (
        AclRule("publish", "a/b"),
        AclRule("subscribe", "a/cmd"),
        AclRule("subscribe", "f/+/x", allow=False),
    )
    acls = {(a["acltype"], a["topic"], a["allow"]) for a in role_acls(rules)}
    assert acls == {
        ("publishClientSend", "a/b", True),
        ("publishClientReceive", "a/cmd", True),
        ("subscribeLiteral", "a/cmd", True),
        ("unsubscribeLiteral", "a/cmd", True),
        ("publishClientReceive", "f/+/x", False),
        ("subscribePattern", "f/+/x", False),
        ("unsubscribePattern", "f/+/x", False),
    }
    station = {(a["acltype"], a["topic"]) for a in role_acls(rules, subscribe_any=True)}
    assert ("subscribePattern", "#") in station and ("subscribeLiteral", "a/cmd") not in station
    priorities = [a["priority"] for a in role_acls(rules)]
    assert priorities == sorted(priorities, reverse=True)  # earlier rules win, as in EMQX
