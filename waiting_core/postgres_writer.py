"""A whole PostgreSQL write transaction in plain SQL, on an asyncpg connection of its own.

The PostgreSQL twin of ``sqlite_writer``: token_api's release transaction runs here, a few
statements straight on the driver, instead of through SQLAlchemy's async session (a greenlet
switch, a compiled-statement lookup and result processing per statement, and the ORM's
unit of work for the changed rows). The connections come from a small pool of their own,
made on first use (the server may not be up when the service starts).

The work gets an ``asyncpg.Connection`` inside a transaction, committed when the work
returns and rolled back if it raises. A server that cannot be reached is
``StorageUnavailable``, as on every other path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from waiting_core.errors import StorageUnavailable
from waiting_core.raw_reads import UNREACHABLE, LazyPool

T = TypeVar("T")
# The pooled connection a work gets (subscripted for the type checker only).
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Work = Callable[[Connection], Awaitable[T]]


class PostgresWriter:
    """Runs write transactions on a pool of ``pool_size`` connections of its own.
    ``start``/``stop`` idempotent."""

    def __init__(self, dsn: str, pool_size: int) -> None:
        self._pool = LazyPool(dsn, pool_size)

    async def start(self) -> None:
        """Nothing to do: the pool is made on first use."""

    async def stop(self) -> None:
        await self._pool.close()

    async def run(self, work: Work[T]) -> T:
        """``work(connection)`` in one transaction, committed when it returns."""
        try:
            pool = await self._pool.get()
            async with pool.acquire() as connection, connection.transaction():
                return await work(connection)
        except UNREACHABLE as exc:
            raise StorageUnavailable() from exc
