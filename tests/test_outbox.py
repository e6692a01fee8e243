"""The outbox never hands a deleted event's id to a new one (relays delete by id)."""

from __future__ import annotations

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
