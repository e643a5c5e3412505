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

echo "==> ruff and mypy"
.venv/bin/ruff check src tests bench migrations scripts
.venv/bin/mypy

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

run_pytest SQLite env WAYSTATION_TEST_DB=sqlite .venv/bin/pytest -q -p no:cacheprovider "$@"
run_pytest PostgreSQL env WAYSTATION_TEST_DB=postgresql .venv/bin/pytest -q -p no:cacheprovider "$@"
echo "==> all tests passed on SQLite and PostgreSQL"
