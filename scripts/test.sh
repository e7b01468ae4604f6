#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine (Debian
# packages, the pinned Python and Node drivers, cargo-nextest), then runs every test.
# Once this has run, `cargo nextest run --workspace` is the fast inner loop.
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# Packages come from apt: as root directly, else through sudo.
SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    $SUDO apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL server binaries (initdb, postgres, psql, pgbench) for the test harness.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
fi
# initdb refuses root: the harness runs PostgreSQL as 'postgres' when we are root.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi
# psycopg 3, a real Python driver for the admin console tests.
if ! /usr/bin/python3 -c 'import psycopg' >/dev/null 2>&1; then
    apt_install python3-psycopg
fi
# PgBouncer, for the side-by-side smoke run of sluice-bench compare.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    apt_install pgbouncer
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

# Real drivers for the prepared-statement tests, at the versions pinned in
# tests/drivers/ (asyncpg, SQLAlchemy, Django, psycopg; node-postgres).
if [ ! -x target/drivers-venv/bin/python ]; then
    /usr/bin/python3 -m venv target/drivers-venv || { apt_install python3-venv; /usr/bin/python3 -m venv target/drivers-venv; }
fi
target/drivers-venv/bin/pip install -q -r tests/drivers/requirements.txt
if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
npm ci --prefix tests/drivers/node --no-audit --no-fund --silent
# pgJDBC from Debian, and a JDK to compile the test program against it.
if [ ! -f /usr/share/java/postgresql.jar ]; then
    apt_install libpostgresql-jdbc-java
fi
if ! command -v javac >/dev/null 2>&1; then
    apt_install default-jdk-headless
fi

# The container image's build step (docker/Dockerfile runs the same script), and the
# compose file's validity: no Docker engine runs here.
docker/build.sh target/docker
if ! command -v docker-compose >/dev/null 2>&1; then
    apt_install docker-compose
fi
docker-compose -f docker/docker-compose.yml config -q

cargo nextest run --workspace
