"""A whole SQLite write transaction in one hop: a plain function, in a thread of its own.

token_api's releases are its hottest writes. Through SQLAlchemy's async engine over
aiosqlite, a group of 16 releases made about 30 thread hops (cursor, execute, fetch, commit,
...), each with its future, loop wake-up and greenlet switch, and cost token_api's event loop
about 10 ms of CPU. That loop also serves every gRPC call, so that was what bounded
CompleteToken. Here the caller hands over one function; it runs in the writer's thread on
the writer's own connection, between ``BEGIN IMMEDIATE`` (the write lock polled for, as on
every other connection: ``sqlite_connections``) and ``COMMIT``, and the loop pays one hop.

The function gets a ``sqlite3.Connection`` and must not commit. Any exception rolls the
transaction back and reaches the caller; a store that cannot be written (locked past the
timeout, an I/O error) is ``StorageUnavailable``, as on every other path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from waiting_core.errors import StorageUnavailable
from waiting_core.sqlite_connections import BUSY_TIMEOUT, PRAGMAS, begin_immediate

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]


class SqliteWriter:
    """Runs write transactions on one connection, one at a time. ``start``/``stop``
    idempotent; the connection is opened by the first transaction."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
            executor.shutdown()

    async def run(self, work: Work[T]) -> T:
        """``work(connection)`` in one transaction, committed when it returns."""
        if self._executor is None:
            raise RuntimeError("SqliteWriter.start() was not called")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._transaction, work
            )
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable() from exc

    def _transaction(self, work: Work[T]) -> T:
        connection = self._connect()
        begin_immediate(connection)
        try:
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # a failed COMMIT leaves it open too
                connection.execute("ROLLBACK")
            raise
        return result

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self._path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=False
            )
            for pragma in PRAGMAS:
                connection.execute(pragma)
            self._connection = connection
        return self._connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
