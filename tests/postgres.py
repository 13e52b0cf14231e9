"""PostgreSQL for tests: the server this machine kind runs at 127.0.0.1:5432 (trust auth)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"

X = TypeVar("X")


def run_in_thread(coro: Coroutine[Any, Any, X]) -> X:
    """Run ``coro`` on an event loop of its own, away from the test's loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def pg_connect(database: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=database, timeout=5
    )


async def reset_pg_schema(database: str) -> None:
    conn = await pg_connect(database)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
