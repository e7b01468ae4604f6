"""psycopg 3 clients looping through transactions while PostgreSQL restarts behind
Sluice: autocommit connections kept open, each client running BEGIN; INSERT; SELECT;
COMMIT and reconnecting when its connection breaks.

The test harness restarts PostgreSQL (or kills it) while this runs, and once
PostgreSQL accepts connections again writes the time (seconds since the epoch) into
MARKER. Then every client must commit again within 2 s of that time, and from 2 s on
SHOW CLIENTS must list no client that has waited longer than that. Every row a
transaction wrote is read back inside it (any cross-talk is caught).

Usage: psycopg_restart.py DSN ADMIN_DSN CLIENTS SECONDS MARKER"""
import os
import sys
import threading
import time

import psycopg

RECOVERY = 2.0


def client(dsn, n, deadline, commits, errors):
    conn = None
    seq = 0
    while time.time() < deadline:
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            seq += 1
            conn.execute("BEGIN")
            conn.execute(
                "INSERT INTO restart_rows (client, seq, v) VALUES (%s, %s, %s)",
                (n, seq, f"{n}:{seq}"),
            )
            row = conn.execute("SELECT v FROM restart_rows WHERE client = %s AND seq = %s", (n, seq)).fetchone()
            assert row == (f"{n}:{seq}",), (n, seq, row)
            conn.execute("COMMIT")
            commits[n].append(time.time())
        except psycopg.Error as e:
            errors[n].append((time.time(), type(e).__name__, str(e).strip().splitlines()[0] if str(e) else ""))
            # The application's connection pool drops a broken connection; one that
            # is still open is rolled back and reused, as Django and SQLAlchemy do.
            try:
                if conn is not None and not conn.closed:
                    conn.execute("ROLLBACK")
            except psycopg.Error:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
            time.sleep(0.05)
    if conn is not None:
        conn.close()


def clients_view(admin_dsn):
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        cur = admin.execute("SHOW CLIENTS")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def main(dsn, admin_dsn, clients, seconds, marker):
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS restart_rows (client int, seq int, v text, PRIMARY KEY (client, seq))")
        setup.execute("TRUNCATE restart_rows")
    deadline = time.time() + seconds
    commits = [[] for _ in range(clients)]
    errors = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=client, args=(dsn, n, deadline, commits, errors), daemon=True) for n in range(clients)
    ]
    for t in threads:
        t.start()
    # Wait for the harness to say when PostgreSQL was back.
    while not os.path.exists(marker) or not open(marker).read().strip():
        assert time.time() < deadline, "the harness never wrote the marker"
        time.sleep(0.05)
    back = float(open(marker).read().strip())
    time.sleep(max(0.0, back + RECOVERY + 0.5 - time.time()))
    stuck = [
        c
        for c in clients_view(admin_dsn)
        if c["database"] == "app" and c["state"] == "waiting" and c["wait"] + c["wait_us"] / 1e6 >= RECOVERY
    ]
    assert not stuck, f"clients still waiting {RECOVERY} s after PostgreSQL was back: {stuck}"
    for t in threads:
        # A client stuck in a query would hold the join past the deadline.
        t.join(timeout=max(0.0, deadline - time.time()) + 10)
        assert not t.is_alive(), "a client is stuck in a query"
    report = []
    for n in range(clients):
        after = [t for t in commits[n] if t >= back]
        first = after[0] - back if after else None
        report.append((n, first, len(commits[n]), errors[n][-3:]))
    late = [r for r in report if r[1] is None or r[1] > RECOVERY]
    assert not late, f"clients that did not commit within {RECOVERY} s of PostgreSQL being back: {late}"
    assert all(len(c) > 0 for c in commits)
    slowest = max(r[1] for r in report)
    print(f"{sum(len(c) for c in commits)} commits, {sum(len(e) for e in errors)} errors; slowest recovery {slowest:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    print("ok")
