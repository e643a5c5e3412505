"""The deployment files in deploy/ (docs/deploy.md) hold together: the compose file parses and wires the
station to PostgreSQL 16 and EMQX 5, the image is multi-stage and runs unprivileged with a readiness
healthcheck, every variable they use is in the env example, and the systemd unit is valid and hardened.
Docker is not available to the tests; `systemd-analyze verify` is used when it exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from waystation.config import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    """Every KEY=value of the example, commented-out ones included."""
    pairs: dict[str, str] = {}
    for line in (DEPLOY / "waystation.env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            pairs[m.group(1)] = m.group(2)
    return pairs


def unit() -> dict[str, dict[str, list[str]]]:
    """The unit file as section → key → values (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / "waystation.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_compose_wires_the_station_to_postgres_16_and_emqx_5() -> None:
    services = compose()["services"]
    assert set(services) == {"station", "postgres", "emqx"}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["emqx"]["image"].startswith("emqx/emqx:5")
    station = services["station"]
    assert station["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert station["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = station["environment"]
    database, mqtt = env["WAYSTATION_DATABASE_URL"], env["WAYSTATION_MQTT_URL"]
    assert database.startswith("postgresql+asyncpg://") and "@postgres:5432/" in database
    assert mqtt.startswith("mqtt://") and mqtt.endswith("@emqx:1883")
    assert env_example()["WAYSTATION_BROKER_ADMIN"] in ("emqx-http", "emqx")
    # Every named volume used is declared, and each stateful service keeps its state in one.
    declared = set(compose()["volumes"])
    for name in ("station", "postgres", "emqx"):
        used = {v.split(":", 1)[0] for v in services[name]["volumes"]}
        assert used and used <= declared, (name, used, declared)
    # The station is reachable only from the host (a TLS proxy goes in front) and runs locked down.
    assert all(p.startswith("127.0.0.1:") for p in station["ports"])
    assert station["cap_drop"] == ["ALL"] and station["read_only"] is True


def test_emqx_asks_the_station_with_the_internal_secret() -> None:
    emqx = compose()["services"]["emqx"]["environment"]
    for key, path in (
        ("EMQX_AUTHENTICATION", "/api/internal/emqx/authn"),
        ("EMQX_AUTHORIZATION__SOURCES", "/api/internal/emqx/authz"),
    ):
        assert f"http://station:8080{path}" in emqx[key]
        assert "Bearer ${WAYSTATION_INTERNAL_SECRET}" in emqx[key]
        # EMQX's own placeholders are escaped from compose's interpolation.
        assert "$${username}" in emqx[key] and re.search(r"(?<!\$)\$\{username\}", emqx[key]) is None
    assert emqx["EMQX_ACTIONS__HTTP__WAYSTATION_PRESENCE__PARAMETERS__PATH"] == "/api/internal/emqx/events"


def test_every_variable_is_in_the_env_example_and_every_station_setting_exists() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    example = env_example()
    assert used and used <= set(example), used - set(example)
    fields = set(Settings.model_fields)
    unknown = [k for k in example if k.startswith("WAYSTATION_") and k[11:].lower() not in fields]
    assert unknown == [], f"not station settings: {unknown}"


def test_the_image_is_multi_stage_unprivileged_and_checks_readiness() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert stages[0].startswith("node:") and all(s.startswith("python:3.11") for s in stages[1:]), stages
    assert "npm run build" in dockerfile and "pip install ." in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    healthcheck = re.search(r"^HEALTHCHECK .*?(?=^\S)", dockerfile, re.MULTILINE | re.DOTALL)
    assert healthcheck and "/readyz" in healthcheck.group(0)


REQUIRED_HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/waystation",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "Restart": "on-failure",
}


def test_the_systemd_unit_is_hardened() -> None:
    service = unit()["Service"]
    for key, value in REQUIRED_HARDENING.items():
        assert value in service.get(key, []), (key, service.get(key))
    assert "MemoryMax" in service
    assert service.get("DynamicUser") == ["yes"] or service.get("User", ["root"])[0] not in ("root", "0")
    assert service["ExecStart"][0].endswith("waystation run")
    assert unit()["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # Verify checks that ExecStart exists and the user resolves: point them at what this machine has.
    text = (DEPLOY / "waystation.service").read_text()
    text = re.sub(r"^ExecStart=.*$", f"ExecStart={shutil.which('true')}", text, flags=re.MULTILINE)
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.MULTILINE)
    copy = tmp_path / "waystation.service"
    copy.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in done.stderr.splitlines() if str(copy) in line or "Unknown" in line]
    assert done.returncode == 0 and problems == [], done.stderr
