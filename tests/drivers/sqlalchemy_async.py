"""SQLAlchemy 2 async with asyncpg through Sluice (transaction mode), concurrent
sessions of its connection pool. Usage: sqlalchemy_async.py URL TASKS ROUNDS"""
import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def task(engine, n, rounds):
    for i in range(1, rounds + 1):
        async with engine.begin() as conn:
            x = (await conn.execute(text(f"SELECT CAST(:i AS int) * {n + 1}"), {"i": i})).scalar_one()
            assert x == i * (n + 1), (n, i, x)
            v = (await conn.execute(text("SELECT v FROM items WHERE id = :i"), {"i": i})).scalar_one()
            assert v == f"item {i}", (n, i, v)


async def main(url, tasks, rounds):
    engine = create_async_engine(url, pool_size=tasks, max_overflow=0)
    try:
        await asyncio.gather(*(task(engine, n, rounds) for n in range(tasks)))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print("ok")
