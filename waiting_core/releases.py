"""Where token_api writes a group of releases: one plain-SQL transaction, per store.

CompleteToken and CancelToken are applied in groups (``token_api/releasing.py``). Each
group is one transaction of a few statements straight on the driver: ``sqlite_releases``
in a writer thread of its own on SQLite, ``postgres_releases`` on an asyncpg pool of its
own on PostgreSQL. Both apply the same rules (``repository.apply_releases``) and write the
group's events to the outbox in the same transaction; the caller hands the committed rows
to the relay. The relay's deletes of published rows go through the same writer
(``delete_published``): on SQLite a second writer in the same process (the relay's own
session) had to poll for the one write lock between back-to-back release groups, and took
10-30 ms a delete under load, while the release groups waited for it in turn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from waiting_core import postgres_releases, sqlite_releases
from waiting_core.domain import TokenStatus
from waiting_core.models import OutboxEvent
from waiting_core.postgres_writer import PostgresWriter
from waiting_core.repository import EventsOf, ReleaseResults
from waiting_core.sqlite_writer import SqliteWriter


class ReleaseStore(Protocol):
    """Applies a group of releases in one transaction. ``start``/``stop`` idempotent."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def apply(
        self, requests: Sequence[tuple[str, TokenStatus]], now: datetime, events_of: EventsOf
    ) -> tuple[ReleaseResults, list[OutboxEvent]]:
        """Each request's Release or DomainError, in order, and the outbox rows written
        (``events_of(results, waiting)``, with their ids), once committed."""
        ...

    async def delete_published(self, ids: Sequence[int]) -> None:
        """Drop these outbox rows (published and acknowledged), in a transaction of its
        own on the same writer."""
        ...


def release_store_for(url: str) -> ReleaseStore:
    """The release store of a ``DATABASE_URL``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        dsn = parsed.set(drivername="postgresql").render_as_string(False)
        return ReleasesOn(PostgresWriter(dsn, pool_size=2), postgres_releases)
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("an in-memory SQLite database cannot be shared: use a file")
    return ReleasesOn(SqliteWriter(parsed.database), sqlite_releases)


class Writer(Protocol):
    """Runs one transaction's work on a connection of its own (``SqliteWriter``,
    ``PostgresWriter``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, work: Any) -> Any: ...


class StoreSql(Protocol):
    """A store's release module (``sqlite_releases``, ``postgres_releases``): its
    functions take the writer's connection."""

    release_tokens: Callable[..., Any]
    delete_published: Callable[..., Any]


class ReleasesOn:
    """A group's releases and the relay's deletes as functions of a store's module
    (``StoreSql``), run by that store's writer."""

    def __init__(self, writer: Writer, sql: StoreSql) -> None:
        self._writer = writer
        self._sql = sql

    async def start(self) -> None:
        await self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    async def apply(
        self, requests: Sequence[tuple[str, TokenStatus]], now: datetime, events_of: EventsOf
    ) -> tuple[ReleaseResults, list[OutboxEvent]]:
        work = functools.partial(
            self._sql.release_tokens, requests=requests, now=now, events_of=events_of
        )
        result: tuple[ReleaseResults, list[OutboxEvent]] = await self._writer.run(work)
        return result

    async def delete_published(self, ids: Sequence[int]) -> None:
        if ids:
            await self._writer.run(functools.partial(self._sql.delete_published, ids=ids))
