"""The issue path's one read, without the ORM: what each (schedule, user) already holds.

IssueToken needs, per caller, how many tokens the user has had in the schedule (the id's
generation) and whether one of them is live (I5). That is one indexed statement, and it runs
once per group of concurrent calls, so its fixed cost is paid by every issue:

- on SQLite, SQLAlchemy over aiosqlite takes about 18 thread hops a statement. Here a
  read-only connection of its own runs the statement in the event loop's thread: it is two
  lookups in ``ix_tokens_user``, and WAL readers never wait for the writer;
- on PostgreSQL it is one prepared statement on a small asyncpg pool of its own.

A failure to reach the store is ``StorageUnavailable``, as on every other path.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

from waiting_core.domain import TokenStatus
from waiting_core.errors import StorageUnavailable

Pair = tuple[int, str]  # (schedule_id, user_id)

_LIVE = frozenset(status.value for status in TokenStatus if status.is_live)


@dataclass(frozen=True, slots=True)
class Held:
    """What one user holds in one schedule."""

    tokens: int = 0  # live or ended: the next token's generation
    live: bool = False


class HeldTokens(Protocol):
    """``held(pairs)``: what each (schedule, user) holds. ``start``/``stop`` idempotent."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def held(self, pairs: Sequence[Pair]) -> dict[Pair, Held]: ...


def held_tokens_for(url: str) -> HeldTokens:
    """The reader for a ``DATABASE_URL``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteHeldTokens(parsed.database or "")
    return PostgresHeldTokens(parsed.set(drivername="postgresql").render_as_string(False))


def _tally(pairs: Sequence[Pair], rows: Any) -> dict[Pair, Held]:
    """Count each asked pair's rows (the IN lists also match the cross pairs: dropped)."""
    counts = dict.fromkeys(pairs, 0)
    live: set[Pair] = set()
    for schedule_id, user_id, status in rows:
        pair = (schedule_id, user_id)
        if pair in counts:
            counts[pair] += 1
            if status in _LIVE:
                live.add(pair)
    return {pair: Held(count, pair in live) for pair, count in counts.items()}


def _columns(pairs: Sequence[Pair]) -> tuple[list[int], list[str]]:
    return sorted({s for s, _ in pairs}), sorted({u for _, u in pairs})


class SqliteHeldTokens:
    """On a read-only connection, in the loop's thread (see the module's docstring)."""

    # One statement for any number of pairs (json_each), so SQLite's statement cache keeps it;
    # both IN lists are still looked up in ix_tokens_user.
    _SQL = (
        "SELECT schedule_id, user_id, status FROM tokens "
        "WHERE schedule_id IN (SELECT value FROM json_each(?)) "
        "AND user_id IN (SELECT value FROM json_each(?))"
    )

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    async def start(self) -> None:
        """Nothing to do: the connection opens on first use, once the schema exists."""

    async def stop(self) -> None:
        """Close the connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def held(self, pairs: Sequence[Pair]) -> dict[Pair, Held]:
        """What each pair holds."""
        if not pairs:
            return {}
        schedules, users = _columns(pairs)
        try:
            cursor = self._connect().execute(self._SQL, (json.dumps(schedules), json.dumps(users)))
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            await self.stop()
            raise StorageUnavailable() from exc
        return _tally(pairs, rows)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                f"file:{self._path}?mode=ro", uri=True, isolation_level=None, timeout=0.2
            )
            connection.execute("PRAGMA query_only=1")
            self._connection = connection
        return self._connection


class PostgresHeldTokens:
    """One prepared statement on a pool of two asyncpg connections, made on first use."""

    _SQL = (
        "SELECT schedule_id, user_id, status FROM tokens "
        "WHERE schedule_id = ANY($1::bigint[]) AND user_id = ANY($2::varchar[])"
    )

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Nothing to do: the pool is made on first use (the server may not be up yet)."""

    async def stop(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def held(self, pairs: Sequence[Pair]) -> dict[Pair, Held]:
        """What each pair holds."""
        if not pairs:
            return {}
        schedules, users = _columns(pairs)
        try:
            pool = await self._get_pool()
            rows = await pool.fetch(self._SQL, schedules, users, timeout=30)
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
        ) as exc:
            raise StorageUnavailable() from exc
        return _tally(pairs, (tuple(row) for row in rows))

    async def _get_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=1, max_size=2, timeout=5, command_timeout=30
                    )
        return self._pool
