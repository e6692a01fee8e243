"""The engine and transactions of the token store, on PostgreSQL (asyncpg) or SQLite (aiosqlite).

Every RPC and every consumed batch runs in one ``async with database.transaction() as s:``
block. Library errors that mean "the database is unreachable" become ``StorageUnavailable``
here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from waiting_core.errors import StorageUnavailable
from waiting_core.migrate import SchemaOutOfDate, check_revision
from waiting_core.raw_reads import POSTGRES_SESSION_SETTINGS
from waiting_core.sqlite_connections import (
    BUSY_TIMEOUT,
    PRAGMAS,
    PollingWriterConnection,
    inline_connector,
)

log = logging.getLogger(__name__)

_READ_ONLY = "waiting_read_only"
# How long ``stop`` waits for transactions still running before it closes the pool.
STOP_DRAIN_SECONDS = 5.0


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError)


class Database:
    """Owns the async engine; hands out framed transactions. ``start``/``stop`` are idempotent."""

    def __init__(
        self, url: str, *, pool_size: int = 10, echo: bool = False, sqlite_in_loop: bool = False
    ) -> None:
        """``sqlite_in_loop``: run SQLite statements in the event loop's thread rather than
        in aiosqlite's (see ``sqlite_connections``); no effect on PostgreSQL."""
        self.url = url
        self._sqlite_in_loop = sqlite_in_loop
        self._pool_size = pool_size
        self._echo = echo
        self._engine: AsyncEngine | None = None
        self._writer: async_sessionmaker[AsyncSession] | None = None
        self._reader: async_sessionmaker[AsyncSession] | None = None
        self._single_reader: async_sessionmaker[AsyncSession] | None = None
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def dialect(self) -> str:
        """'postgresql' or 'sqlite'."""
        return make_url(self.url).get_backend_name()

    @property
    def engine(self) -> AsyncEngine:
        """The engine; only after ``start``."""
        if self._engine is None:
            raise RuntimeError("Database.start() was not called")
        return self._engine

    async def start(self) -> None:
        """Create the engine and its pool; refuse a schema that is not the newest.

        An unreachable database is not an error here (the services retry): the schema is
        then not checked.
        """
        if self._engine is not None:
            return
        self._engine = _create_engine(self.url, self._pool_size, self._echo, self._sqlite_in_loop)
        await self._check_schema(self._engine)
        reader_engine = self._engine.execution_options(**{_READ_ONLY: True})
        self._writer = async_sessionmaker(self._engine, expire_on_commit=False)
        self._reader = async_sessionmaker(reader_engine, expire_on_commit=False)
        self._single_reader = self._reader
        # One statement is its own snapshot: no BEGIN and COMMIT round trips around it.
        autocommit = reader_engine.execution_options(isolation_level="AUTOCOMMIT")
        self._single_reader = async_sessionmaker(autocommit, expire_on_commit=False)

    @staticmethod
    async def _check_schema(engine: AsyncEngine) -> None:
        try:
            async with engine.connect() as connection:
                await connection.run_sync(check_revision)
        except SchemaOutOfDate:
            await engine.dispose()
            raise
        except (TimeoutError, DBAPIError, PoolTimeout, OSError) as exc:
            if not _is_unreachable(exc):
                raise
            log.warning("database unreachable at start; schema not checked: %s", exc)

    async def stop(self) -> None:
        """Close every pooled connection, once the transactions still running have ended
        (up to ``STOP_DRAIN_SECONDS``). A connection in use when the pool is disposed would
        go back to the old pool and never be closed: SQLite's were then reclaimed by the
        garbage collector, still open."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await self._running_transactions_ended()
            await engine.dispose()

    async def _running_transactions_ended(self) -> None:
        try:
            await asyncio.wait_for(self._drained.wait(), STOP_DRAIN_SECONDS)
        except TimeoutError:
            log.warning("database stopping with %d transactions still running", self._in_flight)

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def transaction(self, *, read_only: bool = False) -> AbstractAsyncContextManager[AsyncSession]:
        """One session in one transaction: commit on success, roll back on error."""
        return self._framed(self._reader if read_only else self._writer)

    def single_read(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for exactly one read statement (consistent by itself), at the least cost."""
        return self._framed(self._single_reader)

    @asynccontextmanager
    async def _framed(
        self, makers: async_sessionmaker[AsyncSession] | None
    ) -> AsyncIterator[AsyncSession]:
        if makers is None:
            raise RuntimeError("Database.start() was not called")
        self._in_flight += 1
        self._drained.clear()
        try:
            async with makers() as session, session.begin():
                yield session
        except (TimeoutError, DBAPIError, PoolTimeout, OSError) as exc:
            if _is_unreachable(exc):
                log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
                raise StorageUnavailable() from exc
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()


def _create_engine(url: str, pool_size: int, echo: bool, sqlite_in_loop: bool) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url, echo, sqlite_in_loop)
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per transaction. A connection that died with
        # the server fails its next use once; SQLAlchemy then recycles the whole pool.
        pool_pre_ping=False,
        pool_recycle=1800,
        pool_timeout=10,
        connect_args={
            "timeout": 5,
            "command_timeout": 30,
            "server_settings": POSTGRES_SESSION_SETTINGS,
        },
    )


def _create_sqlite_engine(url: str, echo: bool, in_loop: bool) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    if in_loop:
        engine = create_async_engine(
            url, echo=echo, async_creator=inline_connector(database or ":memory:")
        )
    else:
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": BUSY_TIMEOUT, "factory": PollingWriterConnection},
        )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook issue BEGIN itself, so writers can take the write
        # lock up front (BEGIN IMMEDIATE) instead of failing to upgrade a read lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # a single read: SQLite runs the statement as its own transaction
        read_only = options.get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine
