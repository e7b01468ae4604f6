"""asyncpg through Sluice: its statement cache prepares everything, with the same
statement names (__asyncpg_stmt_N__) on every connection for different SQL.
Usage: asyncpg_clients.py DSN CLIENTS ROUNDS"""
import asyncio
import sys

import asyncpg


async def client(dsn, n, rounds):
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(1, rounds + 1):
            row = await conn.fetchrow(f"SELECT $1::int * {n + 1} AS x, (SELECT v FROM items WHERE id = $1) AS v", i)
            assert (row["x"], row["v"]) == (i * (n + 1), f"item {i}"), (n, i, row)
            async with conn.transaction():
                c = await conn.fetchval(f"SELECT count(*) + {n} FROM items WHERE id <= $1", i)
                assert c == i + n, (n, i, c)
            # An explicit prepared statement, used again later.
            stmt = await conn.prepare(f"SELECT $1::text || '-{n}'")
            assert await stmt.fetchval(str(i)) == f"{i}-{n}"
    finally:
        await conn.close()


async def main(dsn, clients, rounds):
    await asyncio.gather(*(client(dsn, n, rounds) for n in range(clients)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print("ok")
