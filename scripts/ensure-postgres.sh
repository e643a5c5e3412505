#!/usr/bin/env bash
# Make sure the PostgreSQL server the tests use (127.0.0.1:5432, database `test`) is up.
set -euo pipefail
URL="${WAYSTATION_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}"

if ! command -v pg_isready >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing PostgreSQL with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "error: PostgreSQL is not installed; the suite also runs on PostgreSQL (set WAYSTATION_TEST_PG_URL)." >&2
        exit 1
    fi
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "==> starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        version="$(ls /etc/postgresql | sort -V | tail -n1)"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    fi
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 1
    done
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "error: PostgreSQL did not start on 127.0.0.1:5432" >&2
        exit 1
    fi
fi

# The `test` database must exist (trust auth on these machines).
dbname="${URL##*/}"
if ! psql "$URL" -Atc 'select 1' >/dev/null 2>&1; then
    base="${URL%/*}"
    psql "$base/postgres" -Atc "create database \"$dbname\"" >/dev/null 2>&1 || \
        su postgres -c "psql -Atc 'create database \"$dbname\"'" >/dev/null 2>&1 || true
fi
psql "$URL" -Atc 'select 1' >/dev/null
