"""The CLI: user management with clean errors, migrations, bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WAYSTATION = [sys.executable, "-m", "waystation"]


def run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WAYSTATION, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def make_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env.update({"WAYSTATION_DATA_DIR": str(tmp_path / "cli"), "WAYSTATION_DATABASE_URL": database_url})
    return env


@pytest.mark.slow(12)
def test_user_create_and_passwd(database_url: str, tmp_path: Path) -> None:
    env = make_env(database_url, tmp_path)
    r = run(["user", "create", "alice", "--role", "admin", "--password-stdin"], env, "a-strong-password\n")
    assert r.returncode == 0, r.stderr
    assert "created user 'alice'" in r.stderr
    r = run(["user", "create", "alice", "--role", "admin", "--password-stdin"], env, "a-strong-password\n")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = run(["user", "create", "bob", "--role", "emperor", "--password-stdin"], env, "a-strong-password\n")
    assert r.returncode == 2 and "Unknown role" in r.stderr
    r = run(["user", "create", "carl", "--role", "viewer", "--password-stdin"], env, "short\n")
    assert r.returncode == 2 and "at least 8" in r.stderr
    r = run(["user", "passwd", "alice", "--password-stdin"], env, "another-password\n")
    assert r.returncode == 0, r.stderr
    r = run(["user", "passwd", "nobody", "--password-stdin"], env, "another-password\n")
    assert r.returncode == 2 and "No user named" in r.stderr


def test_migrate_command_on_a_new_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env["WAYSTATION_DATA_DIR"] = str(tmp_path / "fresh" / "dir")
    r = run(["migrate"], env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fresh" / "dir" / "waystation.db").exists()


def test_invalid_settings_are_a_clean_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env.update({"WAYSTATION_DATA_DIR": str(tmp_path), "WAYSTATION_MQTT_URL": "http://nope"})
    r = run(["run"], env)
    assert r.returncode == 2
    assert "WAYSTATION_MQTT_URL" in r.stderr and "Traceback" not in r.stderr
    r = run(["run", "--config", str(tmp_path / "missing.toml")], env)
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_workers_on_sqlite_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    env["WAYSTATION_DATA_DIR"] = str(tmp_path)
    r = run(["run", "--workers", "2"], env)
    assert r.returncode == 2 and "PostgreSQL" in r.stderr


def test_simulate_registers_devices_on_a_fresh_data_dir(database_url: str, tmp_path: Path, mosquitto) -> None:
    env = make_env(database_url, tmp_path)
    r = run(
        [
            "simulate",
            "--devices",
            "3",
            "--rate",
            "5",
            "--duration",
            "2",
            "--mqtt",
            f"mqtt://127.0.0.1:{mosquitto.port}",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    assert "registered 3 new device(s)" in r.stderr
    published = int(r.stderr.split("published ", 1)[1].split()[0])
    assert published >= 9  # handshake, heartbeat and state for each of the 3 devices at least
