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

# The web UI (web/, Vue + Vite): build it into src/waystation/web/dist when its sources are newer than
# the build. Without Node.js the station still runs and serves a small landing page instead.
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Node.js and npm with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null || true
fi
if command -v npm >/dev/null 2>&1; then
    dist=src/waystation/web/dist/index.html
    if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
        echo "==> installing the web UI's packages (npm ci)"
        (cd web && npm ci --no-audit --no-fund --loglevel=error)
    fi
    if [ ! -f "$dist" ] || [ -n "$(find web/src web/public web/index.html web/package.json web/package-lock.json \
            web/vite.config.ts web/tsconfig.json -newer "$dist" -print -quit)" ]; then
        echo "==> building the web UI (npm run build)"
        (cd web && npm run --silent build >/dev/null)
    fi
else
    echo "note: Node.js/npm not found: the web UI is not built (the station serves a landing page)." >&2
fi
