#!/usr/bin/env bash
# Throughput and CPU cost: pgbench through PostgreSQL directly, PgBouncer and Sluice,
# with equal settings (transaction mode, pool size 25), in one run, alternating targets.
#
#   benches/pgbench-compare.sh                 # 30 s per run (the documented figures)
#   DURATION=5 benches/pgbench-compare.sh      # quick look
#   WORKLOADS="select:100 tpcb:100" ...        # choose workloads (select|prepared|extended|tpcb|connect:clients)
#   AUTH=scram TLS=1 WORKLOADS="connect:16" ...  # connection storm: SCRAM logins, TLS to the poolers
#
# connect = pgbench -C: a new connection (login) per transaction. AUTH=scram makes the
# clients log in to the poolers with SCRAM-SHA-256 as user "bench" (the poolers log in
# to PostgreSQL with SCRAM too, from the plaintext password in the userlist);
# AUTH=scram-secret puts PostgreSQL's SCRAM secret in the userlist instead (no
# plaintext anywhere: both poolers log in to PostgreSQL by SCRAM pass-through, with the
# keys the clients' logins revealed). AUTH=auth-query lists no "bench" at all: its
# secret is looked up with PgBouncer's default auth_query as auth_user postgres
# (PgBouncer: a query per login; Sluice: cached). TLS=1 makes every client connection
# TLS (client_tls_sslmode = require, a self-signed certificate made with openssl).
#
# Needs the PostgreSQL server binaries and pgbouncer (apt-get install pgbouncer).
# Prints a Markdown table; raw pgbench output goes to $OUT (default benches/results/).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30}
AUTH=${AUTH:-trust}
TLS=${TLS:-0}
SCALE=${SCALE:-10}
POOL=${POOL:-25}
WORKLOADS=${WORKLOADS:-"select:16 select:100 select:400 tpcb:100"}
TARGETS=${TARGETS:-"direct pgbouncer sluice"}
OUT=${OUT:-benches/results/$(date -u +%Y%m%d-%H%M%S)}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
mkdir -p "$OUT"

command -v pgbouncer >/dev/null || { echo "pgbouncer not installed: apt-get install -y pgbouncer" >&2; exit 1; }
cargo build --release -q -p sluice
SLUICE=$PWD/target/release/sluice

# Run PostgreSQL and PgBouncer unprivileged when we are root (both refuse root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d /tmp/sluice-bench-XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PGPORT=$(free_port); BOUNCER_PORT=$(free_port); SLUICE_PORT=$(free_port)
as_pg "$PG_BIN/initdb" -N -A trust -U postgres -E UTF8 --locale=C -D "$WORK/data" >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 500
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
# auth-query: pg_stat_statements counts the lookups PostgreSQL runs for each pooler.
[ "$AUTH" = auth-query ] && echo "shared_preload_libraries = 'pg_stat_statements'" >> "$WORK/data/postgresql.conf"
as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
pg_sql() { as_pg "$PG_BIN/psql" -Atq -h 127.0.0.1 -p "$PGPORT" -U postgres postgres -c "$1"; }
[ "$AUTH" = auth-query ] && pg_sql "CREATE EXTENSION pg_stat_statements" >/dev/null
as_pg "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >/dev/null 2>&1
DB_USER=postgres
if [ "$AUTH" != trust ]; then
    DB_USER=bench
    as_pg "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres postgres -c \
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE bench LOGIN PASSWORD 'bench_pw'; GRANT pg_read_all_data, pg_write_all_data TO bench" >/dev/null
    # First match wins: bench logs in to PostgreSQL with SCRAM too.
    sed -i '1i host all bench 127.0.0.1/32 scram-sha-256' "$WORK/data/pg_hba.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" reload >/dev/null
    export PGPASSWORD=bench_pw
fi
TLS_INI=""
if [ "$TLS" = 1 ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
    chmod 644 "$WORK/tls.key" "$WORK/tls.crt"
    TLS_INI="client_tls_sslmode = require
client_tls_key_file = $WORK/tls.key
client_tls_cert_file = $WORK/tls.crt"
fi
# Clients of the poolers use TLS with TLS=1; PostgreSQL itself has none here.
sslmode_for() { if [ "$TLS" = 1 ] && [ "$1" != direct ]; then echo require; else echo disable; fi; }

# One pgbouncer.ini for both poolers: Sluice reads PgBouncer's format as it is.
if [ "$AUTH" = scram ]; then
    echo '"bench" "bench_pw"' > "$WORK/userlist.txt"
elif [ "$AUTH" = scram-secret ]; then
    secret=$(as_pg "$PG_BIN/psql" -Atq -h 127.0.0.1 -p "$PGPORT" -U postgres postgres -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")
    echo "\"bench\" \"$secret\"" > "$WORK/userlist.txt"
else
    # trust, and auth-query's auth_user (trusted by PostgreSQL here).
    echo '"postgres" ""' > "$WORK/userlist.txt"
fi
write_ini() { # port socket-dir
    cat <<INI
[databases]
postgres = host=127.0.0.1 port=$PGPORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir = $2
auth_type = $([ "$AUTH" = trust ] && echo trust || echo scram-sha-256)
auth_file = $WORK/userlist.txt
$([ "$AUTH" = auth-query ] && echo "auth_user = postgres")
$TLS_INI
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
log_connections = 0
log_disconnections = 0
INI
}
mkdir -p "$WORK/b" "$WORK/s"; [ "$(id -u)" = 0 ] && chown postgres "$WORK/b"
write_ini "$BOUNCER_PORT" "$WORK/b" > "$WORK/pgbouncer.ini"
write_ini "$SLUICE_PORT" "$WORK/s" > "$WORK/sluice.ini"
as_pg pgbouncer "$WORK/pgbouncer.ini" > "$OUT/pgbouncer.log" 2>&1 &
"$SLUICE" "$WORK/sluice.ini" > "$OUT/sluice.log" 2>&1 &
SLUICE_PID=$!
PIDS+=("$SLUICE_PID")
sleep 1
# runuser forks: pgbouncer's own PID is what holds its CPU counters (and what to stop).
BOUNCER_PID=$(pgrep -n -f "pgbouncer $WORK/pgbouncer.ini" | head -1)
PIDS+=("$BOUNCER_PID")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

port_of() { case $1 in direct) echo "$PGPORT";; pgbouncer) echo "$BOUNCER_PORT";; sluice) echo "$SLUICE_PORT";; esac; }
pid_of() { case $1 in pgbouncer) echo "$BOUNCER_PID";; sluice) echo "$SLUICE_PID";; *) echo "";; esac; }

{
echo "# pgbench through direct PostgreSQL, PgBouncer $(pgbouncer --version | head -1 | awk '{print $2}') and Sluice $("$SLUICE" --version | awk '{print $2}')"
echo
echo "auth: $AUTH, client TLS: $([ "$TLS" = 1 ] && echo require || echo off)."
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), scale $SCALE, pool size $POOL, transaction mode, ${DURATION} s per run, pgbench -j 2."
echo
echo "| workload | clients | target | TPS | avg latency ms | failed | pooler CPU µs/txn |"
echo "|---|---|---|---|---|---|---|"
} | tee "$OUT/summary.md"

declare -A TPS
LOOKUPS=""
for w in $WORKLOADS; do
    kind=${w%%:*}; clients=${w##*:}
    case $kind in
        select) args=(-S -M simple) ;;
        extended) args=(-S -M extended) ;;
        prepared) args=(-S -M prepared) ;;
        tpcb) args=(-M simple) ;;
        connect) args=(-S -M simple -C) ;;
        *) echo "unknown workload $kind" >&2; exit 1 ;;
    esac
    for t in $TARGETS; do
        pid=$(pid_of "$t")
        before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        [ "$AUTH" = auth-query ] && pg_sql "SELECT pg_stat_statements_reset()" >/dev/null
        log="$OUT/$kind-$clients-$t.log"
        as_pg env PGSSLMODE="$(sslmode_for "$t")" "$PG_BIN/pgbench" "${args[@]}" -c "$clients" -j 2 -T "$DURATION" -n \
            -h 127.0.0.1 -p "$(port_of "$t")" -U "$DB_USER" postgres > "$log" 2>&1 || true
        after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        tps=$(awk -F'= ' '/^tps/ {split($2,a," "); print a[1]}' "$log" | head -1)
        lat=$(awk -F'= ' '/latency average/ {split($2,a," "); print a[1]}' "$log")
        txns=$(awk -F': ' '/actually processed/ {split($2,a,"/"); print a[1]}' "$log")
        failed=$(awk -F': ' '/number of failed transactions/ {split($2,a," "); print a[1]}' "$log")
        errors=$(grep -ci 'error' "$log" || true)
        cpu="-"
        if [ -n "$pid" ] && [ "${txns:-0}" -gt 0 ]; then
            cpu=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$txns" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
        fi
        TPS[$kind-$clients-$t]=${tps:-0}
        if [ "$AUTH" = auth-query ] && [ -n "$pid" ]; then
            lookups=$(pg_sql "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query ILIKE '%FROM pg_authid WHERE rolname%'")
            LOOKUPS+="$t ran auth_query $lookups times for ${txns:-0} logins ($kind, $clients clients). "
        fi
        echo "| $kind | $clients | $t | ${tps:-FAILED} | ${lat:--} | ${failed:-?} (error lines: $errors) | $cpu |" | tee -a "$OUT/summary.md"
    done
    if [ -n "${TPS[$kind-$clients-pgbouncer]:-}" ] && [ -n "${TPS[$kind-$clients-sluice]:-}" ]; then
        awk -v s="${TPS[$kind-$clients-sluice]}" -v b="${TPS[$kind-$clients-pgbouncer]}" -v k="$kind" -v c="$clients" \
            'BEGIN { if (b > 0) printf "| %s | %s | **Sluice / PgBouncer** | **%.2f×** | | | |\n", k, c, s / b }' | tee -a "$OUT/summary.md"
    fi
done
# Prepared statements: Sluice -M prepared against PgBouncer -M simple (PgBouncer 1.18
# cannot run -M prepared in transaction mode), as the prepared-statement issue asks.
for w in $WORKLOADS; do
    kind=${w%%:*}; clients=${w##*:}
    if [ "$kind" = prepared ] && [ -n "${TPS[prepared-$clients-sluice]:-}" ] && [ -n "${TPS[select-$clients-pgbouncer]:-}" ]; then
        awk -v s="${TPS[prepared-$clients-sluice]}" -v b="${TPS[select-$clients-pgbouncer]}" -v c="$clients" \
            'BEGIN { if (b > 0) printf "| prepared vs select | %s | **Sluice -M prepared / PgBouncer -M simple** | **%.2f×** | | | |\n", c, s / b }' | tee -a "$OUT/summary.md"
    fi
done
[ -n "${LOOKUPS:-}" ] && { echo; echo "$LOOKUPS"; } | tee -a "$OUT/summary.md"
echo
echo "raw output: $OUT"
