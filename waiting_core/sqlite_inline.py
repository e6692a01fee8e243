"""SQLite run in the event loop's own thread, with the write lock awaited, not slept on.

aiosqlite gives each connection a thread and sends it every call. SQLAlchemy's adapter makes
about 18 such calls for a one-statement transaction (cursor, execute, fetch, commit, ...),
each a queue put, a thread wake-up and a loop wake-up. Under load those hops were most of
the activator's CPU and most of issue->ACTIVE on SQLite, and they made a status read wait
behind every other hop on the loop. A statement of these services is an index lookup or a
short batch: microseconds to a few milliseconds, less than the hops around it. So here the
statements run in the loop's thread: :class:`InlineConnection` is aiosqlite's connection
with its work queue replaced by a direct call. SQLAlchemy's async engine, the sessions and
every repository function are unchanged.

Waiting must not hold the loop:

- **The write lock.** Both services write one file, and SQLite lets one writer in at a time.
  Every write transaction begins with ``BEGIN IMMEDIATE`` (``database.py``), which takes the
  lock up front. Here it is tried with busy timeout 0 and, while another connection holds
  the lock, tried again after ``asyncio.sleep`` of 0.2, 0.5, then 1 ms, for up to
  ``WRITE_LOCK_TIMEOUT`` seconds. (SQLite's own busy handler sleeps 25-100 ms between
  tries, which turned a 1 ms wait into a long stall.) Other coroutines run meanwhile,
  including the transaction that holds the lock, when it is in this process.
- **Nothing else should wait.** In WAL mode readers never wait for the writer, and a writer
  holds the lock from BEGIN IMMEDIATE to COMMIT. ``BUSY_TIMEOUT`` covers the rare rest
  (WAL recovery) and bounds how long it could hold the loop.

The cost: a long statement holds the loop for its length. The longest are the pre-queue's
renumbering (50,000 rows a statement, once per opening) and the bulk loads of the tools.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Generator
from typing import Any

import aiosqlite

WRITE_LOCK_TIMEOUT = 30.0
WRITE_LOCK_POLLS = (0.0002, 0.0005, 0.001)  # then every millisecond
BUSY_TIMEOUT = 2.0


class _RunNow:
    """aiosqlite's work queue, with each item run at once in the caller's thread."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:  # noqa: BLE001 - handed to the waiter, as aiosqlite does
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection, run in the loop's thread (see the module's docstring)."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _RunNow()  # type: ignore[assignment]

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._connect().__await__()  # type: ignore[return-value]  # no thread to start

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        if args and args[0] == "BEGIN IMMEDIATE":
            return await self._begin_immediate(fn, *args)
        return fn(*args, **kwargs)

    async def _begin_immediate(self, begin: Callable[..., Any], *args: Any) -> Any:
        connection = self._conn
        deadline = time.monotonic() + WRITE_LOCK_TIMEOUT
        pauses = iter(WRITE_LOCK_POLLS)
        connection.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    return begin(*args)
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(next(pauses, WRITE_LOCK_POLLS[-1]))
        finally:
            connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")


def inline_connector(path: str) -> Callable[[], InlineConnection]:
    """SQLAlchemy's ``async_creator`` for the SQLite file at ``path``."""

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)

    def creator() -> InlineConnection:
        return InlineConnection(connect)

    return creator
