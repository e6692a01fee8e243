"""Admission: one short transaction per schedule that fills its free slots, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime

from waiting_core import domain, repository
from waiting_core.database import Database


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class Admitter:
    """Fills a schedule's free slots with its oldest PENDING tokens."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.admitted = 0

    async def admit(self, schedule_id: int) -> int:
        """Lock the schedule, admit up to ``capacity - active`` tokens in one statement, commit.

        Running it twice, or from two activators at once, admits nobody twice and never
        exceeds capacity (I1, I4): the schedule row's lock serialises the count and the
        update, and only PENDING rows can become ACTIVE.
        """
        async with self._database.transaction() as session:
            schedule = await repository.lock_schedule(session, schedule_id)
            free = domain.free_slots(schedule.capacity, schedule.active_count)
            admitted = await repository.admit_oldest(session, schedule, free, utc_now())
        self.admitted += len(admitted)
        return len(admitted)
