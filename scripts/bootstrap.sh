#!/usr/bin/env bash
# Create .venv and install Waystation with its dev tools; install Mosquitto when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Waystation needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.waystation-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing Python dependencies into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch "$stamp"
fi

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }
if ! have_mosquitto; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing mosquitto with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
        # The package may start a system broker on 1883; Waystation runs its own, so leave it be.
    else
        echo "note: mosquitto is not installed. The station falls back to the pure-Python amqtt broker." >&2
        echo "      For the full experience (and for 'make test') install it: sudo apt-get install mosquitto mosquitto-clients" >&2
    fi
fi
