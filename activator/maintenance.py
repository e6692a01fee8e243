"""The sweeper: settles schedules that need it without waiting for a Kafka event.

Every tick it looks for schedules whose ACTIVE tokens expired, that have free slots and a
line (a rate limit held admissions back, or a trigger was missed), or that enforce a pending
TTL, and settles those whose partition this activator owns. Partition ownership comes from
the consumer group, so with several activators each schedule is swept by one of them at a
time; the schedule row lock keeps I1 even while a rebalance moves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka.partitioner import murmur2

from activator.admission import Admitter
from waiting_core import repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import Unavailable
from waiting_core.events import schedule_key
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)


def partition_of(schedule_id: int, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a schedule's key (murmur2)."""
    return int((murmur2(schedule_key(schedule_id)) & 0x7FFFFFFF) % partitions)


class Sweeper(BackgroundWorker):
    """Runs the sweep loop in a task. ``start``/``stop`` are idempotent."""

    name = "sweeper"

    def __init__(
        self,
        database: Database,
        admitter: Admitter,
        ownership: Callable[[], tuple[frozenset[int], int]],
        interval: float,
    ) -> None:
        self._database = database
        self._admitter = admitter
        self._ownership = ownership
        self._interval = interval
        super().__init__()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep_once()
            except Unavailable as exc:
                log.warning("sweep skipped: %s", exc)
            except Exception:
                log.exception("sweep failed; trying again next tick")

    async def sweep_once(self) -> int:
        """Settle every owned schedule that needs it; return how many were settled."""
        owned, partitions = self._ownership()
        if not owned or partitions == 0:
            return 0
        now = utc_now()
        async with self._database.transaction(read_only=True) as session:
            due = set(await repository.schedules_with_due_expiry(session, now))
            due.update(await repository.schedules_to_settle(session))
        mine = sorted(s for s in due if partition_of(s, partitions) in owned)
        for schedule_id in mine:
            await self._admitter.settle(schedule_id)
        return len(mine)
