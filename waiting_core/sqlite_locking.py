"""SQLite's write lock, taken by polling every millisecond instead of by SQLite's back-off.

Both services write one SQLite file, and SQLite lets one writer in at a time. A writer
begins with ``BEGIN IMMEDIATE`` (``database.py`` makes every write transaction do so), which
takes the write lock up front instead of failing later to upgrade a read lock. When the
other process holds the lock, SQLite's own busy handler retries with sleeps that grow to
25-100 ms, so a wait for a commit that takes a millisecond becomes a long stall: issue to
ACTIVE went from about 10 ms to over 100 ms at p50.

:class:`PollingWriterConnection` is a ``sqlite3.Connection`` factory (aiosqlite passes it to
``sqlite3.connect``) whose cursors run ``BEGIN IMMEDIATE`` themselves: busy timeout 0, try,
and on "database is locked" sleep 0.2, 0.5, then 1 ms between tries, for up to
``WRITE_LOCK_TIMEOUT`` seconds. The sleeps run in aiosqlite's thread for that connection,
never on the event loop. Every other statement keeps the normal busy timeout.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Self

WRITE_LOCK_TIMEOUT = 30.0
WRITE_LOCK_POLLS = (0.0002, 0.0005, 0.001)  # then every millisecond


class PollingWriterCursor(sqlite3.Cursor):
    """Runs ``BEGIN IMMEDIATE`` by polling for the write lock (see the module docstring)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        if sql == "BEGIN IMMEDIATE":
            return self._begin_immediate()
        return super().execute(sql, parameters)

    def _begin_immediate(self) -> Self:
        connection = self.connection
        deadline = time.monotonic() + WRITE_LOCK_TIMEOUT
        pauses = iter(WRITE_LOCK_POLLS)
        connection.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    return super().execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(next(pauses, WRITE_LOCK_POLLS[-1]))
        finally:
            connection.execute(f"PRAGMA busy_timeout={int(WRITE_LOCK_TIMEOUT * 1000)}")


class PollingWriterConnection(sqlite3.Connection):
    """A sqlite3 connection whose cursors poll for the write lock (see above)."""

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or PollingWriterCursor)
