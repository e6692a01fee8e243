"""The settle's statements on the driver (``driver_sql``), on both stores: what they write
reads back through the ORM exactly, and they run inside the session's transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from waiting_core import repository
from waiting_core.database import Database
from waiting_core.domain import NewToken, ScheduleSettings, TokenStatus
from waiting_core.models import OutboxEvent, OutboxRow, ScheduleRow

MOMENT = datetime(2026, 11, 27, 3, 4, 5, 678901, tzinfo=UTC)
# A schedule's moments must be still to come: the session's activator shares the database,
# and a schedule whose next_due_at has passed is due, so it may settle it (and clear its
# next_due_at) between this test's write and its reads. With MOMENT's that test failed
# once the day had gone by.
FUTURE = datetime(2126, 11, 27, 3, 4, 5, 678901, tzinfo=UTC)


async def test_a_missing_schedule_is_created_with_the_defaults(
    database_url: str, schedule_id: int
) -> None:
    async with Database(database_url) as database:
        async with database.transaction() as session:
            (locked,) = await repository.lock_schedule_states(session, [schedule_id])
        async with database.transaction(read_only=True) as session:
            stored = await repository.get_schedule(session, schedule_id)
    defaults = ScheduleSettings(schedule_id)
    assert stored is not None
    assert (locked.capacity, locked.last_seq, locked.next_due_at) == (defaults.capacity, 0, None)
    assert _columns(locked) == _columns(stored)


async def test_every_column_of_a_stored_schedule_reads_back_through_the_orm(
    database_url: str, schedule_id: int
) -> None:
    async with Database(database_url) as database:
        async with database.transaction() as session:
            await repository.lock_schedule(session, schedule_id)
        async with database.transaction() as session:
            (row,) = await repository.lock_schedule_states(session, [schedule_id])
            row.last_seq, row.head_seq, row.active_count, row.pending_count = 9, 4, 3, 5
            row.admitted_total, row.rate_allowance, row.admit_rate_estimate = 7, 0.25, 12.5
            row.rate_checked_at, row.admit_rate_at, row.admit_rate_since = _moments(3)
            row.abandonment_since, row.next_due_at, row.opens_at = _moments(3, start=3)
            row.draw_started_at, row.drawn_at = _moments(2, start=6)
            row.prequeue_order, row.prequeue_seed = "FIFO", b"\x00seed\xff"
            await repository.store_schedule_states(session, [row])
        async with database.transaction(read_only=True) as session:
            stored = await repository.get_schedule(session, schedule_id)
        async with database.transaction() as session:
            (again,) = await repository.lock_schedule_states(session, [schedule_id])
    assert stored is not None
    assert _columns(stored) == _columns(row) == _columns(again)


async def test_placed_tokens_read_back_through_the_orm(database_url: str, schedule_id: int) -> None:
    newcomers = [
        NewToken(f"placed-{schedule_id}-{n}", f"user-{n}", schedule_id, MOMENT) for n in range(3)
    ]
    async with Database(database_url) as database:
        for _ in range(2):  # the log read twice: nothing doubles
            async with database.transaction() as session:
                schedules = await repository.lock_schedule_states(session, [schedule_id])
                placement = await repository.place_new_tokens(session, schedules, newcomers)
                await repository.store_schedule_states(session, schedules)
        async with database.transaction(read_only=True) as session:
            tokens = [await repository.get_token(session, t.token_id) for t in newcomers]
            deadlines = await repository.earliest_deadlines(session, schedules)
    assert placement.placed == []  # all three were written the first time
    assert [(t.seq, t.status, t.issued_at, t.last_seen_at) for t in tokens] == [
        (n, TokenStatus.PENDING, MOMENT, MOMENT) for n in (1, 2, 3)
    ]
    assert schedules[0].last_seq == 3
    assert deadlines[schedule_id] == repository.Deadlines(None, None)  # no abandonment


async def test_the_earliest_deadlines_are_read_per_schedule(
    database_url: str, new_schedule_id: Callable[[], int]
) -> None:
    first, second = new_schedule_id(), new_schedule_id()
    async with Database(database_url) as database, database.transaction() as session:
        schedules = await repository.lock_schedule_states(session, [first, second])
        for schedule in schedules:
            schedule.pending_ttl_seconds = 60
        newcomers = [
            NewToken(f"seen-{s}-{n}", f"u{n}", s, MOMENT + timedelta(seconds=n))
            for s in (first, second)
            for n in (2, 1)
        ]
        await repository.place_new_tokens(session, schedules, newcomers)
        deadlines = await repository.earliest_deadlines(session, schedules)
    assert {s: d.earliest_seen for s, d in deadlines.items()} == {
        first: MOMENT + timedelta(seconds=1),
        second: MOMENT + timedelta(seconds=1),
    }


async def test_driver_statements_roll_back_with_the_session(
    database_url: str, schedule_id: int
) -> None:
    row = OutboxEvent(
        origin=f"driver-{schedule_id}",
        topic="t",
        key=b"k",
        event_type="E",
        payload=b"p",
        created_at=MOMENT,
    )

    class Abandon(Exception):
        pass

    async with Database(database_url) as database:
        try:
            async with database.transaction() as session:
                (row_id,) = await repository.insert_outbox_rows(session, [row])
                raise Abandon
        except Abandon:
            pass
        async with database.transaction() as session:
            (kept_id,) = await repository.insert_outbox_rows(session, [row])
        async with database.transaction(read_only=True) as session:
            stored = (
                await session.execute(select(OutboxRow).where(OutboxRow.origin == row.origin))
            ).scalar_one()
    assert row_id > 0
    assert (stored.id, stored.created_at, stored.payload) == (kept_id, MOMENT, b"p")


def _moments(count: int, start: int = 0) -> list[datetime]:
    return [FUTURE + timedelta(minutes=start + n) for n in range(count)]


def _columns(row: ScheduleRow) -> dict[str, object]:
    return {column.key: getattr(row, column.key) for column in ScheduleRow.__table__.columns}
