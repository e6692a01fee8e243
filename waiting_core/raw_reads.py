"""Reads outside the ORM, for the hottest paths: rows as tuples, straight from the driver.

The issue path's I5 read (``held_tokens``) and the token lookup behind every status call
(``token_lookup``) are one indexed statement each. Through SQLAlchemy's ORM a statement
costs about a millisecond of Python around it (session, unit of work, row processing) and,
on SQLite over aiosqlite, some 18 thread hops; the statement itself takes tens of
microseconds. Here:

- on SQLite, a read-only connection of its own runs the statement in the event loop's
  thread (WAL readers never wait for the writer, and each statement is its own snapshot);
- on PostgreSQL, the statement is prepared once on a small asyncpg pool of its own.

A failure to reach the store is ``StorageUnavailable``, as on every other path.

The plain-SQL writers (``releases``) share what is here for PostgreSQL's connections
(``LazyPool``, ``StatelessConnection``) and the columns' own conversions of values going in
and out (``column_converters``, ``bind_converter``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import asyncpg
from sqlalchemy import Float
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.sql.elements import KeyedColumnElement

from waiting_core.errors import StorageUnavailable

Row = Sequence[Any]
Convert = Callable[[Any], Any] | None

# What asyncpg raises when the server cannot be reached, is starting or shutting down, or
# has no connection to spare: the store is unavailable, not the request wrong.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


class RawReads(Protocol):
    """``fetch(sql, params)``: the rows of one read statement. ``start``/``stop`` idempotent."""

    @property
    def dialect(self) -> Dialect:
        """SQLAlchemy's dialect of the store, to compile statements for it."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]: ...


def raw_reads_for(url: str, *, pool_size: int = 4) -> RawReads:
    """The reader for a ``DATABASE_URL``; on PostgreSQL, ``pool_size`` connections at most
    (on top of the service's database pool)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteReads(parsed.database or "", _dialect_of(url))
    dsn = parsed.set(drivername="postgresql").render_as_string(False)
    return PostgresReads(dsn, _dialect_of(url), pool_size)


def _dialect_of(url: str) -> Dialect:
    """The dialect SQLAlchemy uses for ``url``, to compile for (no connection is made)."""
    dialect: Dialect = make_url(url).get_dialect()()
    return dialect


class SqliteReads:
    """On a read-only connection, in the loop's thread (see the module's docstring)."""

    def __init__(self, path: str, dialect: Dialect) -> None:
        self._path = path
        self._dialect = dialect
        self._connection: sqlite3.Connection | None = None

    @property
    def dialect(self) -> Dialect:
        """The SQLite dialect (``?`` parameters)."""
        return self._dialect

    async def start(self) -> None:
        """Nothing to do: the connection opens on first use, once the schema exists."""

    async def stop(self) -> None:
        """Close the connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """The rows of ``sql``."""
        try:
            return self._connect().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            await self.stop()
            raise StorageUnavailable() from exc

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                f"file:{self._path}?mode=ro", uri=True, isolation_level=None, timeout=0.2
            )
            connection.execute("PRAGMA query_only=1")
            self._connection = connection
        return self._connection


# Every statement of ours is planned for the values it is run with. PostgreSQL otherwise
# switches a prepared statement to a generic plan after five runs and keeps it for the
# connection's life, or until the next ANALYZE. One made while ``tokens`` was a page or two
# (a new database, the first minute of a first sale) is a sequential scan, and stays one as
# the table grows: in a fresh `make bench` run, the issue path's reads then scanned ten
# thousand rows each, and PostgreSQL's CPU per IssueToken tripled. Planning our short
# statements costs about 0.1 ms of the server's CPU each.
#
# No parallel workers and no JIT: our statements are short, and a parallel plan starts two
# background workers for each run. The settle's read of the newcomers already written (a few
# hundred ids under a rush) got one (``Gather``) in a `make bench` run: it took 20 ms instead
# of a few tenths, and was most of PostgreSQL's CPU per IssueToken.
#
# A lookup of many keys is written as one probe per key, which the planner cannot turn into
# a scan: ``unnest($1) AS k(key) CROSS JOIN LATERAL (SELECT ... WHERE column = k.key
# OFFSET 0)`` (the OFFSET keeps the subquery from being merged into a join). As a plain join
# or ``= ANY``, a few hundred keys (a settle under a rush) on a table not yet analysed (a
# new sale's first minutes) got a merge join over two sorted scans of the whole table:
# 35 ms at 30,000 tokens, against 2 ms probed. Written so: ``held_tokens`` and the settle's
# read of the newcomers already written (``repository``).
POSTGRES_SESSION_SETTINGS = {
    "plan_cache_mode": "force_custom_plan",
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
}


class StatelessConnection(asyncpg.Connection):
    """A pooled connection whose users leave no session state behind (no SET, LISTEN or
    advisory lock; every transaction ends before the connection goes back), so going back
    to the pool needs no reset query: asyncpg's default runs one, a second round trip for
    every read or transaction."""

    def get_reset_query(self) -> str:
        return ""


class LazyPool:
    """A pool of up to ``size`` asyncpg connections that leave no state behind, made on
    first use (the server may not be up when the service starts)."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._size = size
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> asyncpg.Pool[asyncpg.Record]:
        """The pool, made now if it is not yet."""
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._size,
                        timeout=5,
                        command_timeout=30,
                        connection_class=StatelessConnection,
                        server_settings=POSTGRES_SESSION_SETTINGS,
                    )
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


class PostgresReads:
    """Prepared statements on a pool of asyncpg connections of their own (``LazyPool``)."""

    def __init__(self, dsn: str, dialect: Dialect, pool_size: int) -> None:
        self._dialect = dialect
        self._pool = LazyPool(dsn, pool_size)

    @property
    def dialect(self) -> Dialect:
        """The asyncpg dialect (``$n`` parameters)."""
        return self._dialect

    async def start(self) -> None:
        """Nothing to do: the pool is made on first use."""

    async def stop(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """The rows of ``sql``."""
        try:
            pool = await self._pool.get()
            return [tuple(record) for record in await pool.fetch(sql, *params, timeout=30)]
        except UNREACHABLE as exc:
            raise StorageUnavailable() from exc


def column_converters(
    columns: Sequence[KeyedColumnElement[Any]], dialect: Dialect
) -> list[tuple[str, Convert]]:
    """Each column's attribute name with the conversion SQLAlchemy applies to its values
    (SQLite's timestamps are text, say). Floats need none: both drivers return a ``float``
    for a double precision column (and asyncpg's numeric conversion would ask for the
    column's type code)."""
    return [
        (
            column.key,
            None
            if isinstance(column.type, Float)
            else column.type.dialect_impl(dialect).result_processor(dialect, None),
        )
        for column in columns
    ]


def converted(columns: list[tuple[str, Convert]], values: Sequence[Any]) -> dict[str, Any]:
    """A row's values by attribute name, each converted as its column's type says."""
    return {
        name: convert(value) if convert is not None and value is not None else value
        for (name, convert), value in zip(columns, values, strict=True)
    }


def bind_converter(column: KeyedColumnElement[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """The conversion SQLAlchemy applies to a value bound for ``column`` (an enum to its
    value, a timestamp to SQLite's text)."""
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    if processor is None:
        return lambda value: value
    return processor
