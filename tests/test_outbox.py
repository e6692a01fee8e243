"""The outbox never hands a deleted event's id to a new one (relays delete by id)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.helpers import System
from waiting_core import repository
from waiting_core.events import outbox_row, slots_freed_event


async def test_outbox_ids_are_never_reused(system: System, schedule_id: int) -> None:
    database = system.token_api.database
    now = datetime.now(UTC)

    def event() -> object:
        event = slots_freed_event(schedule_id, "test", now)
        return outbox_row("t", schedule_id, event, now, "token_api")

    async with database.transaction() as session:
        first = event()
        await repository.add_outbox_event(session, first)  # type: ignore[arg-type]
        await session.flush()
        first_id = first.id  # type: ignore[attr-defined]
        await repository.delete_outbox_events(session, [first_id])
    async with database.transaction() as session:
        second = event()
        await repository.add_outbox_event(session, second)  # type: ignore[arg-type]
        await session.flush()
        second_id = second.id  # type: ignore[attr-defined]
        await repository.delete_outbox_events(session, [second_id])

    assert second_id > first_id
