#!/usr/bin/env bash
# The whole test suite: lint and types, then pytest on SQLite and on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
if ! { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }; then
    echo "error: the tests run against a real Mosquitto; install it (sudo apt-get install mosquitto) and retry." >&2
    exit 1
fi

scripts/ensure-postgres.sh

# The snapshot tests check that the `age` CLI opens our files: install it when missing (as root).
if ! command -v age >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing age with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null; } \
        || echo "note: could not install age; the age CLI check is skipped" >&2
fi

echo "==> ruff and mypy"
.venv/bin/ruff check src tests bench migrations scripts
.venv/bin/mypy

# The web UI's end-to-end tests (tests/ui) drive Debian's Chromium; install it when missing.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium with apt-get (for the web UI tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "==> web UI: type check and unit tests (vue-tsc, Vitest)"
(cd web && npm run --silent typecheck && npm run --silent test)

run_pytest() {
    local label="$1"; shift
    echo "==> pytest on $label"
    set +e
    "$@"
    local code=$?
    set -e
    if [ "$code" = "5" ]; then
        echo "error: pytest collected no tests on $label" >&2
        exit 1
    fi
    if [ "$code" != "0" ]; then
        echo "error: tests failed on $label (exit $code)" >&2
        exit "$code"
    fi
}

# Three pytest workers (pytest-xdist): the suite mostly waits on real brokers, databases, HTTP and a
# browser, so three processes keep a 2-core machine busy (measured here: about 6.5 min per database).
# WAYSTATION_TEST_WORKERS=0 runs in-process.
workers="${WAYSTATION_TEST_WORKERS:-3}"
run_pytest SQLite env WAYSTATION_TEST_DB=sqlite .venv/bin/pytest -q -p no:cacheprovider --durations=15 -n "$workers" "$@"
run_pytest PostgreSQL env WAYSTATION_TEST_DB=postgresql .venv/bin/pytest -q -p no:cacheprovider --durations=15 -n "$workers" "$@"
echo "==> all tests passed on SQLite and PostgreSQL"
