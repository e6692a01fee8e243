"""Group commit's gathering: concurrent calls wait in line, and one task takes them as groups.

Every group costs the same fixed work whatever its size: on the issue path one read, one
produce request (and the broker's handling of it) and the wake-ups around them. Taking only
what had arrived while the previous group was in flight gave groups of about three calls at
c=32 on two cores, because the process admits calls only that fast, and that fixed work was
most of the cost of a call. So under a rush (the previous group had ``RUSH_CALLS`` or more)
a group lingers: it waits until the previous group's callers could be back (as many calls
as were waiting, plus as many as that group had), or ``linger_seconds`` at most. A fixed
set of busy callers is then taken whole as soon as it is back, so nobody waits for
nothing; in an open rush of new callers the wait is the linger. A lone caller, or a few,
never waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")


class CallGroups(Generic[Item]):
    """A line of calls taken in groups of at most ``limit``, lingering under a rush."""

    RUSH_CALLS = 4

    def __init__(self, linger_seconds: float, limit: int) -> None:
        self._linger = linger_seconds
        self._limit = limit
        self._waiting: deque[Item] = deque()
        self._wanted = 1
        self._wake: asyncio.Future[None] | None = None
        self._previous = 0

    def put(self, item: Item) -> None:
        """Join the line; wakes the taker once as many are waiting as it wants."""
        self._waiting.append(item)
        wake = self._wake
        if wake is not None and len(self._waiting) >= self._wanted and not wake.done():
            wake.set_result(None)

    async def next_group(self) -> list[Item]:
        """The next group: at least one call, and under a rush those that arrive in the
        linger."""
        await self._until(1, None)
        if self._linger > 0 and self._previous >= self.RUSH_CALLS:
            await self._until(min(len(self._waiting) + self._previous, self._limit), self._linger)
        group = [self._waiting.popleft() for _ in range(min(self._limit, len(self._waiting)))]
        self._previous = len(group)
        return group

    async def _until(self, count: int, seconds: float | None) -> None:
        """Wait until ``count`` calls are waiting, or ``seconds`` (None: no limit)."""
        if len(self._waiting) >= count:
            return
        loop = asyncio.get_running_loop()
        self._wanted, self._wake = count, loop.create_future()
        # A bare timer, not asyncio.timeout, as on the issue path's own deadline.
        timer = None if seconds is None else loop.call_later(seconds, _settle, self._wake)
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
