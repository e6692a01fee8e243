"""The sweeper: settles schedules whose next due moment has come, without waiting for an event.

Each settle records when its schedule next needs settling on its own (``next_due_at``: the
earliest ACTIVE expiry, the next abandonment, or the rate bucket's next admission). The
sweeper asks only for schedules that are due, with one indexed query, then sleeps until the
next due moment (at most a second), or until a settle makes an earlier one. So its cost
follows the work that is due, not the number of schedules, and TTLs fire on time.

Only the owner of a schedule's partition settles it, so with several activators each
schedule is swept by one of them at a time; the schedule row lock keeps I1 even while a
rebalance moves it. Every ``stalled_check_seconds`` it also looks for lines with free slots
that nothing woke (a slow safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from activator.admission import Admitter, Settlement
from waiting_core import repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import Unavailable
from waiting_core.events import schedule_key
from waiting_core.producer import key_partition
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

DUE_BATCH = 1000
LONGEST_SLEEP_SECONDS = 1.0


def partition_of(schedule_id: int, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a schedule's key (murmur2)."""
    return key_partition(schedule_key(schedule_id), partitions)


class Sweeper(BackgroundWorker):
    """Runs the sweep loop in a task. ``start``/``stop`` are idempotent."""

    name = "sweeper"

    def __init__(
        self,
        database: Database,
        admitter: Admitter,
        ownership: Callable[[], tuple[frozenset[int], int]],
        stalled_check_seconds: float,
    ) -> None:
        self._database = database
        self._admitter = admitter
        self._ownership = ownership
        self._stalled_check_seconds = stalled_check_seconds
        self._wake = asyncio.Event()
        self._next_due: datetime | None = None
        self._next_stalled_check = 0.0
        self.rounds = 0
        self.settled = 0
        admitter.watch_due(self._on_settlement)
        super().__init__()

    def _on_settlement(self, settlement: Settlement) -> None:
        """A settle moved its schedule's due moment: wake up earlier if it comes first."""
        earlier = _earliest(self._next_due, settlement.next_due_at)
        if earlier != self._next_due:
            self._next_due = earlier
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._sleep_until_due()
            try:
                await self.sweep_once()
            except Unavailable as exc:
                log.warning("sweep skipped: %s", exc)
            except Exception:
                log.exception("sweep failed; trying again")

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        timeout = LONGEST_SLEEP_SECONDS
        if self._next_due is not None:
            until_due = (self._next_due - utc_now()).total_seconds()
            timeout = min(timeout, max(0.0, until_due))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def sweep_once(self) -> int:
        """Settle every owned schedule that is due; return how many were settled."""
        self.rounds += 1
        owned, partitions = self._ownership()
        if not owned or partitions == 0:
            self._next_due = None
            return 0
        now = utc_now()
        self._next_due = None  # from here on, settles elsewhere report theirs (_on_settlement)
        async with self._database.transaction(read_only=True) as session:
            due = set(await repository.due_schedules(session, now, DUE_BATCH))
            if self._stalled_check_due():
                due.update(await repository.stalled_lines(session))
            queried = await repository.next_due_after(session, now)
        self._next_due = _earliest(self._next_due, queried)
        mine = sorted(s for s in due if partition_of(s, partitions) in owned)
        await self._admitter.settle_many(mine)
        self.settled += len(mine)
        if len(due) >= DUE_BATCH:
            self._next_due = now  # more are due than one batch holds: go on at once
        return len(mine)

    def _stalled_check_due(self) -> bool:
        loop_time = asyncio.get_running_loop().time()
        if loop_time < self._next_stalled_check:
            return False
        self._next_stalled_check = loop_time + self._stalled_check_seconds
        return True


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    """The earlier of two moments, either of which may be unknown."""
    if first is None or second is None:
        return first or second
    return min(first, second)
