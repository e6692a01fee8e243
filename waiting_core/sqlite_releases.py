"""Releases (CompleteToken, CancelToken) as one plain-SQL transaction on SQLite, run by a
``SqliteWriter`` in one hop.

Read the tokens and their schedules' counts, apply the releases in memory
(``repository.apply_releases``, as ``postgres_releases`` does), write the changed tokens
and counts, and insert the outbox rows. No row locks are needed: ``BEGIN IMMEDIATE`` holds
SQLite's one write lock until the commit, so nothing else changes these rows meanwhile.
Values go in and come out with the columns' own conversions (timestamps are text on
SQLite), as SQLAlchemy's would.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.dialects import sqlite

from waiting_core import repository
from waiting_core.domain import TokenStatus
from waiting_core.models import OutboxEvent, ScheduleRow, TokenRecord, TokenRow
from waiting_core.raw_reads import bind_converter, column_converters, converted
from waiting_core.repository import EventsOf, ReleaseResults

_DIALECT = sqlite.dialect()
_TOKEN_COLUMNS = list(TokenRow.__table__.columns)
_TOKEN_VALUES = column_converters(_TOKEN_COLUMNS, _DIALECT)

_COLUMN_LIST = ", ".join(column.name for column in _TOKEN_COLUMNS)
_SELECT_TOKENS = (
    f"SELECT {_COLUMN_LIST} FROM tokens"  # noqa: S608 - the column names come from the model
    " WHERE token_id IN (SELECT value FROM json_each(?))"
)
_SELECT_COUNTS = (
    "SELECT schedule_id, active_count, pending_count FROM schedules"
    " WHERE schedule_id IN (SELECT value FROM json_each(?))"
)
_SET_ENDED = "UPDATE tokens SET status = ?, ended_at = ? WHERE token_id = ?"
_SET_COUNTS = "UPDATE schedules SET active_count = ?, pending_count = ? WHERE schedule_id = ?"


_STATUS = bind_converter(TokenRow.__table__.c.status, _DIALECT)
_TIME = bind_converter(TokenRow.__table__.c.ended_at, _DIALECT)


def release_tokens(
    connection: sqlite3.Connection,
    requests: Sequence[tuple[str, TokenStatus]],
    now: datetime,
    events_of: EventsOf,
) -> tuple[ReleaseResults, list[OutboxEvent]]:
    """Apply the releases (token id, target status) in request order; write the changes
    and ``events_of(results, waiting)`` to the outbox. The results, and the outbox rows with
    ids."""
    ids = list(dict.fromkeys(token_id for token_id, _ in requests))
    tokens = {
        token.token_id: token
        for token in (
            TokenRecord(**converted(_TOKEN_VALUES, row))
            for row in connection.execute(_SELECT_TOKENS, (json.dumps(ids),))
        )
    }
    schedule_ids = sorted({token.schedule_id for token in tokens.values()})
    schedules = {
        schedule_id: ScheduleRow(
            schedule_id=schedule_id, active_count=active_count, pending_count=pending_count
        )
        for schedule_id, active_count, pending_count in connection.execute(
            _SELECT_COUNTS, (json.dumps(schedule_ids),)
        )
    }
    results = repository.apply_releases(requests, tokens, schedules, now)
    changed, touched = repository.release_changes(results, schedules)
    connection.executemany(
        _SET_ENDED, [(_STATUS(t.status), _TIME(t.ended_at), t.token_id) for t in changed]
    )
    connection.executemany(
        _SET_COUNTS, [(s.active_count, s.pending_count, s.schedule_id) for s in touched]
    )
    events = events_of(results, repository.schedules_with_waiters(schedules))
    _insert_outbox_rows(connection, events)
    return results, events


def _insert_outbox_rows(connection: sqlite3.Connection, rows: Sequence[OutboxEvent]) -> None:
    """Insert the rows and give each its id (``repository.sqlite_outbox_ids``)."""
    if not rows:
        return
    connection.executemany(repository.INSERT_OUTBOX.sqlite, repository.outbox_values(rows, _TIME))
    (last,) = connection.execute(repository.LAST_OUTBOX_ID.sqlite).fetchone()
    for row, row_id in zip(rows, repository.sqlite_outbox_ids(last, len(rows)), strict=True):
        row.id = row_id


def delete_published(connection: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Drop outbox rows the broker has acknowledged (the relay's deletes, on this writer)."""
    connection.execute(repository.DELETE_OUTBOX.sqlite, (json.dumps(list(ids)),))
