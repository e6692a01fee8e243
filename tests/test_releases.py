"""The release store (plain SQL per store): a group's results, and what it leaves in the
tables, read back through the ORM: statuses, timestamps, counts and outbox ids."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from token_api.releasing import ReleaseBatcher, _Request
from waiting.v1 import events_pb2
from waiting_core import repository
from waiting_core.bulk import load_pending
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.errors import FailedPrecondition, TokenNotFound
from waiting_core.events import Topics, slots_freed_row
from waiting_core.models import OutboxEvent, OutboxRow
from waiting_core.outbox import OutboxRelay
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
        waiting_after: list[frozenset[int]] = []

        def events_of(_: object, waiting: frozenset[int]) -> list[OutboxEvent]:
            waiting_after.append(waiting)
            return [slots_freed_row(topics, schedule_id, "test", later) for _ in "ab"]

        try:
            await store.apply([(ended, TokenStatus.COMPLETED)], now, lambda *_: [])
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
                events_of,
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
    assert waiting_after == [frozenset()]  # the pending token was cancelled: nobody waits


async def test_a_freed_slot_wakes_the_activator_only_where_someone_waits(
    database_url: str, new_schedule_id: Callable[[], int]
) -> None:
    now = datetime.now(UTC)
    nobody_waits, someone_waits = new_schedule_id(), new_schedule_id()
    async with Database(database_url) as database, database.transaction() as session:
        holders = {}
        for schedule_id in (nobody_waits, someone_waits):
            holder, *_ = await load_pending(
                session, schedule_id, 2 if schedule_id == someone_waits else 1, now
            )
            holders[schedule_id] = holder
            await session.execute(
                text("UPDATE tokens SET status = 'ACTIVE' WHERE token_id = :t"),
                {"t": holder},
            )
            schedule = await repository.lock_schedule(session, schedule_id)
            schedule.active_count = 1
            schedule.pending_count = 1 if schedule_id == someone_waits else 0
    store = release_store_for(database_url)
    topics = Topics(origin="test-releases", waiting="t")
    releaser = ReleaseBatcher(store, OutboxRelay(database, "", topics=topics, partitions=1), topics)
    await store.start()
    try:
        requests = [(holders[s], TokenStatus.COMPLETED) for s in (nobody_waits, someone_waits)]
        _, events = await store.apply(
            requests,
            now,
            functools.partial(releaser._events, [_request(r) for r in requests], now=now),
        )
    finally:
        await store.stop()

    freed = [
        e.key for e in events if e.event_type == events_pb2.SlotsFreedEvent.DESCRIPTOR.full_name
    ]
    assert freed == [str(someone_waits).encode()]
    assert sum(e.event_type.endswith("TokenStateChangedEvent") for e in events) == 2


def _request(request: tuple[str, TokenStatus]) -> _Request:
    return _Request(*request, answer=asyncio.get_running_loop().create_future())


async def test_the_relay_deletes_published_rows_on_the_release_writer(
    database_url: str, schedule_id: int
) -> None:
    """The relay's deletes go through the release store's own writer (``delete_published``):
    exactly the ids given, whatever their number (one parameter, no bound per statement)."""
    now = datetime.now(UTC)
    topics = Topics(origin="test-delete-published", waiting="t")
    store = release_store_for(database_url)
    await store.start()
    try:
        _, events = await store.apply(
            [],
            now,
            lambda *_: [slots_freed_row(topics, schedule_id, "test", now) for _ in range(1500)],
        )
        ids = [event.id for event in events if event.id is not None]
        await store.delete_published(ids[:1200])
        await store.delete_published([])
    finally:
        await store.stop()
    async with Database(database_url) as database, database.transaction() as session:
        left = (
            await session.execute(select(OutboxRow.id).where(OutboxRow.origin == topics.origin))
        ).scalars()
        assert set(left) == set(ids[1200:])


async def test_a_caller_that_goes_away_leaves_its_release_applied_and_the_next_served(
    database_url: str, schedule_id: int
) -> None:
    now = datetime.now(UTC)
    async with Database(database_url) as database:
        async with database.transaction() as session:
            gone, staying = await load_pending(session, schedule_id, 2, now)
            schedule = await repository.lock_schedule(session, schedule_id)
            schedule.active_count, schedule.pending_count = 0, 2
        store = release_store_for(database_url)
        topics = Topics(origin="test-releases", waiting="t")
        relay = OutboxRelay(database, "", topics=topics, partitions=1)
        releaser = ReleaseBatcher(store, relay, topics)
        await store.start()
        await releaser.start()
        try:
            caller = asyncio.create_task(releaser.release(gone, TokenStatus.CANCELLED))
            await asyncio.sleep(0)  # its request is in line
            caller.cancel()
            # A group that broke on the cancelled answer would never serve the next call.
            served = await asyncio.wait_for(
                releaser.release(staying, TokenStatus.CANCELLED), timeout=60
            )
        finally:
            await releaser.stop()
            await store.stop()
        async with database.transaction(read_only=True) as session:
            left_behind = await repository.get_token(session, gone)

    assert caller.cancelled()
    assert served.status == TokenStatus.CANCELLED
    assert left_behind is not None
    assert left_behind.status == TokenStatus.CANCELLED
