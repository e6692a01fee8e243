"""Releases (CompleteToken, CancelToken) as one plain-SQL transaction on PostgreSQL, run by
a ``PostgresWriter``.

The twin of ``sqlite_releases``, with the same rules (``repository.apply_releases``) and
the same lock order as every other writer: the tokens' schedule rows in id order, then the
tokens. Five statements for a whole group: lock the schedules, lock and read the tokens,
write the changed tokens (one ``UPDATE … FROM unnest``), write the changed counts, and
insert the outbox rows with ids drawn from the table's sequence first (so each row's id is
known without relying on the order of ``RETURNING``). Values go in and come out with the
columns' own conversions, as SQLAlchemy's would.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from waiting_core import repository
from waiting_core.domain import TokenStatus
from waiting_core.models import OutboxEvent, ScheduleRow, TokenRecord, TokenRow
from waiting_core.postgres_writer import Connection
from waiting_core.raw_reads import bind_converter, column_converters, converted
from waiting_core.repository import EventsOf, ReleaseResults

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
_TOKEN_COLUMNS = list(TokenRow.__table__.columns)
_TOKEN_VALUES = column_converters(_TOKEN_COLUMNS, _DIALECT)
_COLUMN_LIST = ", ".join(column.name for column in _TOKEN_COLUMNS)

_LOCK_SCHEDULES = (
    "SELECT schedule_id, active_count, pending_count FROM schedules"
    " WHERE schedule_id IN (SELECT schedule_id FROM tokens WHERE token_id = ANY($1::text[]))"
    " ORDER BY schedule_id FOR UPDATE"
)
_LOCK_TOKENS = (
    f"SELECT {_COLUMN_LIST} FROM tokens"  # noqa: S608 - the column names come from the model
    " WHERE token_id = ANY($1::text[]) FOR UPDATE"
)
_SET_ENDED = (
    "UPDATE tokens SET status = ended.status, ended_at = $3"
    " FROM unnest($1::text[], $2::text[]) AS ended(token_id, status)"
    " WHERE tokens.token_id = ended.token_id"
)
_SET_COUNTS = (
    "UPDATE schedules SET active_count = counts.active, pending_count = counts.pending"
    " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])"
    " AS counts(schedule_id, active, pending)"
    " WHERE schedules.schedule_id = counts.schedule_id"
)


_STATUS = bind_converter(TokenRow.__table__.c.status, _DIALECT)
_TIME = bind_converter(TokenRow.__table__.c.ended_at, _DIALECT)


async def release_tokens(
    connection: Connection,
    requests: Sequence[tuple[str, TokenStatus]],
    now: datetime,
    events_of: EventsOf,
) -> tuple[ReleaseResults, list[OutboxEvent]]:
    """``sqlite_releases.release_tokens`` on PostgreSQL, with the rows locked."""
    ids = list(dict.fromkeys(token_id for token_id, _ in requests))
    schedules = {
        row[0]: ScheduleRow(schedule_id=row[0], active_count=row[1], pending_count=row[2])
        for row in await connection.fetch(_LOCK_SCHEDULES, ids)
    }
    tokens = {
        token.token_id: token
        for token in (
            TokenRecord(**converted(_TOKEN_VALUES, tuple(row)))
            for row in await connection.fetch(_LOCK_TOKENS, ids)
        )
    }
    results = repository.apply_releases(requests, tokens, schedules, now)
    changed, touched = repository.release_changes(results, schedules)
    if changed:
        statuses = [_STATUS(token.status) for token in changed]
        await connection.execute(
            _SET_ENDED, [token.token_id for token in changed], statuses, _TIME(now)
        )
    if touched:
        await connection.execute(
            _SET_COUNTS,
            [s.schedule_id for s in touched],
            [s.active_count for s in touched],
            [s.pending_count for s in touched],
        )
    events = events_of(results, repository.schedules_with_waiters(schedules))
    await _insert_outbox_rows(connection, events)
    return results, events


async def _insert_outbox_rows(connection: Connection, rows: Sequence[OutboxEvent]) -> None:
    """Insert the rows with ids taken from the table's sequence (never reused)."""
    if not rows:
        return
    inserted = await connection.fetch(
        repository.INSERT_OUTBOX.postgresql, *repository.outbox_arrays(rows, _TIME)
    )
    for row, (row_id,) in zip(rows, inserted, strict=True):
        row.id = row_id


async def delete_published(connection: Connection, ids: Sequence[int]) -> None:
    """Drop outbox rows the broker has acknowledged (the relay's deletes, on this writer)."""
    await connection.execute(repository.DELETE_OUTBOX.postgresql, list(ids))
