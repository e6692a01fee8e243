"""The two ways a service talks to SQLite: in the event loop's thread, or in aiosqlite's.

aiosqlite gives each connection a thread and sends it every call. SQLAlchemy's adapter makes
about 18 such calls for a one-statement transaction (cursor, execute, fetch, commit, ...),
each a queue put, a thread wake-up and a loop wake-up. A statement of these services is an
index lookup or a short batch: microseconds to a few milliseconds, less than the hops around
it. Which way is cheaper depends on what else the process's loop does:

- **In the loop's thread** (:class:`InlineConnection`, the activator). Its loop does little
  besides its own transactions and reads, and the hops were most of its CPU and latency:
  under 400 status reads a second, timers fired seconds late. Here aiosqlite's work queue is
  replaced by a direct call; SQLAlchemy's async engine, the sessions and every repository
  function are unchanged. A long statement holds the loop for its length, so the longest
  (the pre-queue's renumbering) go in chunks with a loop turn between them.
- **In aiosqlite's thread** (:class:`PollingWriterConnection`, token_api and the tools).
  token_api's loop is busy with gRPC itself, so SQLite work done in another thread runs on
  the other core meanwhile; in the loop, CompleteToken lost about 20% of its rate.

Either way, waiting for the write lock holds no loop. Both services write one file, and
SQLite lets one writer in at a time. Every write transaction begins with ``BEGIN IMMEDIATE``
(``database.py``), which takes the lock up front. It is tried with busy timeout 0 and,
while another connection holds the lock, tried again after 0.2, 0.5, then every 1 ms, for
up to ``WRITE_LOCK_TIMEOUT`` seconds, in a worker thread. (SQLite's own busy handler sleeps
25-100 ms between tries, which turned a 1 ms wait into a long stall; the loop's timers are
too coarse, about 1 ms and later under load, to catch the gaps between another process's
transactions.) Any other busy wait is bounded by ``BUSY_TIMEOUT``: in WAL mode readers never
wait for the writer, and a writer holds the lock from BEGIN IMMEDIATE to COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Self

import aiosqlite

WRITE_LOCK_TIMEOUT = 30.0
WRITE_LOCK_POLLS = (0.0002, 0.0005, 0.001)  # then every millisecond
BUSY_TIMEOUT = 2.0
# Every connection's settings: write-ahead log (readers never wait for the writer), no fsync
# per commit (a crash of the machine may lose the last commits, not the file), bounded waits.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}",
    "PRAGMA foreign_keys=ON",
)


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
    """aiosqlite's connection, run in the loop's thread; the write lock is polled for in a
    worker thread (see the module's docstring)."""

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
        with _no_busy_wait(self._conn):
            try:
                return begin(*args)  # the lock is free, as it mostly is
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
            return await asyncio.to_thread(_poll_for_write_lock, begin, *args)


@contextlib.contextmanager
def _no_busy_wait(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("PRAGMA busy_timeout=0")
    try:
        yield
    finally:
        connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")


def begin_immediate(connection: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` on a connection of this thread, polling for the write lock."""
    with _no_busy_wait(connection):
        _poll_for_write_lock(connection.execute, "BEGIN IMMEDIATE")


def _poll_for_write_lock(begin: Callable[..., Any], *args: Any) -> Any:
    """Try ``BEGIN IMMEDIATE`` now, then after 0.2, 0.5 and every 1 ms (busy timeout 0)."""
    deadline = time.monotonic() + WRITE_LOCK_TIMEOUT
    pauses = iter(WRITE_LOCK_POLLS)
    while True:
        try:
            return begin(*args)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(next(pauses, WRITE_LOCK_POLLS[-1]))


class PollingWriterCursor(sqlite3.Cursor):
    """Runs ``BEGIN IMMEDIATE`` by polling for the write lock, in aiosqlite's thread."""

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        if sql != "BEGIN IMMEDIATE":
            return super().execute(sql, parameters)
        with _no_busy_wait(self.connection):
            result: Self = _poll_for_write_lock(super().execute, sql)
            return result


class PollingWriterConnection(sqlite3.Connection):
    """A sqlite3 connection whose cursors poll for the write lock (aiosqlite's ``factory``)."""

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or PollingWriterCursor)


def inline_connector(path: str) -> Callable[[], InlineConnection]:
    """SQLAlchemy's ``async_creator`` for the SQLite file at ``path``."""

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)

    def creator() -> InlineConnection:
        return InlineConnection(connect)

    return creator
