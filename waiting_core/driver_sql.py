"""Statements straight on a session's driver connection, inside the session's transaction.

The settle runs about ten statements per transaction. Through SQLAlchemy each costs 0.3 to
0.5 ms of Python (execution context, cache key, parameter and row processing) around
SQL that takes tens of microseconds, and the activator pays it for every consumed batch and
every freed slot. The settle's hottest statements (placing the newcomers, reading the
deadlines, inserting the outbox rows) are written here as plain SQL once per store
(``DialectSql``) and run on the driver: aiosqlite (in the event loop's thread for the
activator, see ``sqlite_connections``) or asyncpg. They share the session's transaction and
locks; like ``repository._core``, they skip the ORM's autoflush.

Values go in and come out with the columns' own conversions (``raw_reads.bind_converter``,
``column_converters``), so a row reads back through the ORM exactly as if SQLAlchemy had
written it. A failure to reach the store is ``StorageUnavailable``, as on every other path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy import Column
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from waiting_core.errors import StorageUnavailable
from waiting_core.raw_reads import UNREACHABLE, Convert, Row, bind_converter, column_converters


@dataclass(frozen=True, slots=True)
class DialectSql:
    """One statement in each driver's terms: SQLite's ``?`` parameters with lists as JSON
    (``json_each``), PostgreSQL's ``$n`` parameters with lists as arrays."""

    sqlite: str
    postgresql: str


# Each column's conversions on each store, made once: (store, table, column, direction).
_CONVERSIONS: dict[tuple[str, str, str, str], Convert] = {}


class DriverSql:
    """The driver connection of one session's transaction (``driver_sql``)."""

    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self._driver = driver
        self._dialect = dialect
        self._sqlite = dialect.name == "sqlite"

    @property
    def is_sqlite(self) -> bool:
        """Whether the store is SQLite."""
        return self._sqlite

    def values(self, values: Sequence[Any]) -> Any:
        """A list bound as one parameter: JSON text on SQLite, an array on PostgreSQL."""
        return json.dumps(list(values)) if self._sqlite else list(values)

    def bind(self, column: Column[Any]) -> Callable[[Any], Any]:
        """The conversion of a value bound for ``column`` on this store."""
        key = (self._dialect.name, column.table.name, column.key, "bind")
        if key not in _CONVERSIONS:
            _CONVERSIONS[key] = bind_converter(column, self._dialect)
        return cast(Callable[[Any], Any], _CONVERSIONS[key])

    def result(self, column: Column[Any]) -> Convert:
        """The conversion of a value read from ``column`` on this store (None: as it is)."""
        key = (self._dialect.name, column.table.name, column.key, "result")
        if key not in _CONVERSIONS:
            _CONVERSIONS[key] = column_converters([column], self._dialect)[0][1]
        return _CONVERSIONS[key]

    async def fetch(self, sql: DialectSql, *params: Any) -> list[Row]:
        """The rows of a statement."""
        try:
            if self._sqlite:
                cursor = await self._driver.execute(sql.sqlite, params)
                return cast(list[Row], await cursor.fetchall())
            return [tuple(record) for record in await self._driver.fetch(sql.postgresql, *params)]
        except (sqlite3.OperationalError, *UNREACHABLE) as exc:
            raise StorageUnavailable() from exc

    async def insert_rows(self, sql: DialectSql, rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows: on SQLite once per row, on PostgreSQL in one statement that takes
        each column as an array (``INSERT ... SELECT * FROM unnest($1, $2, ...)``)."""
        if not rows:
            return
        if self._sqlite:
            await self.execute_many(sql, rows)
            return
        try:
            columns = [list(column) for column in zip(*rows, strict=True)]
            await self._driver.execute(sql.postgresql, *columns)
        except UNREACHABLE as exc:
            raise StorageUnavailable() from exc

    async def execute_many(self, sql: DialectSql, rows: Sequence[Sequence[Any]]) -> int | None:
        """Run a statement once per row of parameters (pipelined on PostgreSQL); on SQLite,
        how many rows it changed in all."""
        if not rows:
            return 0
        try:
            if self._sqlite:
                cursor = await self._driver.executemany(sql.sqlite, rows)
                return cast(int, cursor.rowcount)
            await self._driver.executemany(sql.postgresql, rows)
            return None
        except (sqlite3.OperationalError, *UNREACHABLE) as exc:
            raise StorageUnavailable() from exc


async def driver_sql(session: AsyncSession) -> DriverSql:
    """The driver connection under the session, in its transaction (begun if it was not:
    SQLAlchemy's asyncpg adapter begins lazily, at its first statement)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if isinstance(driver, asyncpg.Connection) and not driver.is_in_transaction():
        await connection.exec_driver_sql("SELECT 1")
    return DriverSql(driver, connection.dialect)
