"""Outbox ids: each inserted row gets its own id back, and a deleted event's id is never
handed to a new one (relays delete by id)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tests.helpers import System
from waiting_core import repository
from waiting_core.events import Topics, slots_freed_row


async def test_outbox_ids_are_never_reused(system: System, schedule_id: int) -> None:
    database = system.token_api.database
    now = datetime.now(UTC)

    async def write_and_delete_one() -> int:
        async with database.transaction() as session:
            row = slots_freed_row(Topics(origin="test", waiting="t"), schedule_id, "test", now)
            (row_id,) = await repository.insert_outbox_rows(session, [row])
            await repository.delete_outbox_events(session, [row_id])
        return row_id

    first_id = await write_and_delete_one()
    second_id = await write_and_delete_one()

    assert second_id > first_id


async def test_inserted_rows_get_their_own_ids(system: System, schedule_id: int) -> None:
    """The ids come back in the rows' order (on SQLite they are worked out, not returned),
    also while another writer inserts outbox rows at the same time; they ascend in that
    order, which is the order the relay sends them in."""
    database = system.token_api.database
    topics = Topics(origin="test-ids", waiting="t")
    now = datetime.now(UTC)

    async def write(reason: str) -> dict[int, bytes]:
        rows = [slots_freed_row(topics, schedule_id + i, reason, now) for i in range(300)]
        async with database.transaction() as session:
            ids = await repository.insert_outbox_rows(session, rows)
        assert ids == sorted(ids)
        return dict(zip(ids, (row.payload for row in rows), strict=True))

    written = await asyncio.gather(write("a"), write("b"), write("c"))
    async with database.transaction(read_only=True) as session:
        stored = await repository.oldest_outbox_events(session, "test-ids", 10_000)
    by_id = {row.id: row.payload for row in stored if row.id is not None}
    for payloads in written:
        assert len(payloads) == 300
        assert all(by_id[row_id] == payload for row_id, payload in payloads.items())
    async with database.transaction() as session:
        await repository.delete_outbox_events(session, list(by_id))
