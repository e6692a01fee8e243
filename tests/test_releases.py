"""The release store (plain SQL per store): a group's results, and what it leaves in the
tables, read back through the ORM: statuses, timestamps, counts and outbox ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from waiting_core import repository
from waiting_core.bulk import load_pending
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.errors import FailedPrecondition, TokenNotFound
from waiting_core.events import Topics, slots_freed_row
from waiting_core.models import OutboxRow
from waiting_core.releases import release_store_for
from waiting_core.repository import Release


async def test_a_group_of_releases_is_written_as_the_rules_say(
    database_url: str, schedule_id: int
) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    async with Database(database_url) as database:
        async with database.transaction() as session:
            active, pending, ended = await load_pending(session, schedule_id, 3, now)
            await session.execute(
                text("UPDATE tokens SET status = 'ACTIVE' WHERE token_id IN (:a, :e)"),
                {"a": active, "e": ended},
            )
            schedule = await repository.lock_schedule(session, schedule_id)
            schedule.active_count, schedule.pending_count = 2, 1
        store = release_store_for(database_url)
        await store.start()
        topics = Topics(origin="test-releases", waiting="t")
        try:
            await store.apply([(ended, TokenStatus.COMPLETED)], now, lambda _: [])
            later = now + timedelta(seconds=1)
            results, events = await store.apply(
                [
                    (active, TokenStatus.COMPLETED),
                    (pending, TokenStatus.CANCELLED),
                    (active, TokenStatus.COMPLETED),  # a repeat: harmless
                    (ended, TokenStatus.CANCELLED),  # already ended
                    ("no-such-token", TokenStatus.COMPLETED),
                ],
                later,
                lambda _: [slots_freed_row(topics, schedule_id, "test", later) for _ in "ab"],
            )
        finally:
            await store.stop()
        async with database.transaction(read_only=True) as session:
            tokens = {t: await repository.get_token(session, t) for t in (active, pending, ended)}
            counts = await repository.get_schedule(session, schedule_id)
            outbox = (
                await session.execute(select(OutboxRow.id).where(OutboxRow.origin == topics.origin))
            ).scalars()
            stored_ids = set(outbox)

    first, second, repeat, again, unknown = results
    assert isinstance(first, Release)
    assert (first.changed, first.freed_slot) == (True, True)
    assert isinstance(second, Release)
    assert (second.changed, second.freed_slot) == (True, False)
    assert isinstance(repeat, Release)
    assert not repeat.changed
    assert isinstance(again, FailedPrecondition)
    assert isinstance(unknown, TokenNotFound)
    assert tokens[active].status == TokenStatus.COMPLETED
    assert tokens[active].ended_at == later
    assert tokens[pending].status == TokenStatus.CANCELLED
    assert tokens[ended].status == TokenStatus.COMPLETED
    assert tokens[ended].ended_at == now
    assert counts is not None
    assert (counts.active_count, counts.pending_count) == (0, 0)
    event_ids = [event.id for event in events]
    assert None not in event_ids
    assert len(set(event_ids)) == 2
    assert stored_ids == set(event_ids)
