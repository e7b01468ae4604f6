"""psycopg 3 pipeline mode and executemany() through Sluice, with connections kept
open as an application's connection pool keeps them: many clients on a small pool.

Every client, every round: a pipeline of SELECTs, a pipeline with Pipeline.sync() in
the middle, executemany() outside and inside a transaction, then a plain query that
reads back what it wrote. Between steps the connection sits idle: in transaction mode
its server must be back in the pool by then, or the other clients starve (they would
wait out query_wait_timeout). At the end, with every connection still open and idle,
SHOW POOLS must say sv_active = 0 and cl_waiting = 0.

Usage: psycopg_pipelines.py DSN ADMIN_DSN CLIENTS ROUNDS"""
import asyncio
import sys

import psycopg


async def client(dsn, n, rounds, done, release):
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        for r in range(rounds):
            # A pipeline of independent statements (psycopg ends it with Sync, Flush).
            async with conn.pipeline():
                curs = [await conn.execute("SELECT %s::int * %s::int", (i, n + 1)) for i in range(20)]
            for i, cur in enumerate(curs):
                assert (await cur.fetchone()) == (i * (n + 1),), (n, r, i)

            # A pipeline with an explicit sync in the middle.
            async with conn.pipeline() as p:
                a = await conn.execute("SELECT %s::text", (f"a{n}",))
                await p.sync()
                b = await conn.execute("SELECT %s::text", (f"b{n}",))
            assert (await a.fetchone()) == (f"a{n}",)
            assert (await b.fetchone()) == (f"b{n}",)

            # executemany() runs as a pipeline internally, outside a transaction...
            rows = [(n, r, k, f"{n}-{r}-{k}") for k in range(10)]
            async with conn.cursor() as cur:
                await cur.executemany("INSERT INTO pipe_rows (client, round, k, v) VALUES (%s, %s, %s, %s)", rows)
            # ... and inside one.
            async with conn.transaction():
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "UPDATE pipe_rows SET v = v || '!' WHERE client = %s AND round = %s AND k = %s",
                        [(n, r, k) for k in range(0, 10, 2)],
                    )
            cur = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE v LIKE '%%!') FROM pipe_rows WHERE client = %s AND round = %s",
                (n, r),
            )
            assert (await cur.fetchone()) == (10, 5), (n, r)
            # Idle between requests, as a web worker is between pages.
            await asyncio.sleep(0.01)
        # Every client ends with a pipeline, then stays connected and idle.
        async with conn.pipeline():
            last = await conn.execute("SELECT %s::int", (n,))
        assert (await last.fetchone()) == (n,)
        done.release()
        await release.wait()
    finally:
        await conn.close()


async def pools(admin_dsn):
    conn = await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True)
    try:
        cur = await conn.execute("SHOW POOLS")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in await cur.fetchall()]
    finally:
        await conn.close()


async def main(dsn, admin_dsn, clients, rounds):
    setup = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await setup.execute(
        "CREATE TABLE IF NOT EXISTS pipe_rows (client int, round int, k int, v text, PRIMARY KEY (client, round, k))"
    )
    await setup.execute("TRUNCATE pipe_rows")
    await setup.close()

    done = asyncio.Semaphore(0)
    release = asyncio.Event()
    tasks = [asyncio.create_task(client(dsn, n, rounds, done, release)) for n in range(clients)]
    for _ in range(clients):
        waiter = asyncio.create_task(done.acquire())
        finished, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in finished:
            if t is not waiter and t.exception() is not None:
                raise t.exception()
        if waiter not in finished:
            await waiter
    # Every client is connected and idle: no server may still be lent to one.
    rows = [p for p in await pools(admin_dsn) if p["database"] == "app"]
    assert rows, "no pool for app"
    for p in rows:
        assert p["sv_active"] == 0 and p["cl_waiting"] == 0, f"pool after pipelines: {p}"
        assert p["cl_active"] == clients, f"pool after pipelines: {p}"
    release.set()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    print("ok")
