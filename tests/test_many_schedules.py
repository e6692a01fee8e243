"""Many schedules: TTLs fire and refill on time, and the sweeper leaves schedules alone until due.

The bounds are checked from what the store recorded (``expires_at`` against ``ended_at`` and
the next token's ``activated_at``), never from sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from activator.admission import Settlement
from tests.helpers import System, configure, eventually, issue, wait_counts
from waiting_core.domain import TokenStatus
from waiting_core.models import TokenRow

SCHEDULES = 40
BOUND = timedelta(seconds=1)


async def _rows(system: System, schedule_ids: list[int]) -> dict[str, TokenRow]:
    async with system.activator.database.transaction(read_only=True) as session:
        result = await session.execute(
            select(TokenRow).where(TokenRow.schedule_id.in_(schedule_ids))
        )
        return {row.user_id + f"@{row.schedule_id}": row for row in result.scalars().all()}


async def _lines(
    system: System, new_schedule_id: Callable[[], int], *, holders_in_first: bool, **settings: int
) -> list[int]:
    """Schedules of capacity 1, each with a holder and a waiter behind it.

    With ``holders_in_first`` the settings are applied once every holder is ACTIVE, so that
    a short pending TTL applies to the waiters only.
    """
    schedule_ids = [new_schedule_id() for _ in range(SCHEDULES)]
    first = {} if holders_in_first else settings
    await asyncio.gather(*(configure(system, s, capacity=1, **first) for s in schedule_ids))
    await asyncio.gather(*(issue(system, "holder", s) for s in schedule_ids))
    if holders_in_first:
        for schedule_id in schedule_ids:
            await wait_counts(system, schedule_id, active=1, pending=0)
        await asyncio.gather(*(configure(system, s, **settings) for s in schedule_ids))
    await asyncio.gather(*(issue(system, "waiter", s) for s in schedule_ids))
    return schedule_ids


async def test_active_ttls_expire_and_refill_within_a_second(
    system: System, new_schedule_id: Callable[[], int]
) -> None:
    schedule_ids = await _lines(
        system, new_schedule_id, holders_in_first=False, active_ttl_seconds=3
    )

    async def all_refilled() -> bool:
        rows = await _rows(system, schedule_ids)
        waiters = [rows[f"waiter@{s}"] for s in schedule_ids]
        return all(w.status != TokenStatus.PENDING for w in waiters)

    await eventually(all_refilled, timeout=30)

    rows = await _rows(system, schedule_ids)
    for schedule_id in schedule_ids:
        holder, waiter = rows[f"holder@{schedule_id}"], rows[f"waiter@{schedule_id}"]
        assert holder.expires_at is not None
        assert holder.ended_at is not None
        assert holder.status == TokenStatus.EXPIRED
        assert holder.ended_at - holder.expires_at <= BOUND, f"schedule {schedule_id} expired late"
        assert waiter.activated_at is not None
        # The slot is free from the holder's expiry, or from the waiter's issue if later (a
        # 3 s TTL leaves time to place every waiter first, even with this process busy).
        free_from = max(holder.expires_at, waiter.issued_at)
        assert waiter.activated_at - free_from <= BOUND, (
            f"schedule {schedule_id} refill: expires {holder.expires_at} ended {holder.ended_at}"
            f" issued {waiter.issued_at} activated {waiter.activated_at}"
        )


async def test_pending_ttls_abandon_within_a_second(
    system: System, new_schedule_id: Callable[[], int]
) -> None:
    schedule_ids = await _lines(
        system, new_schedule_id, holders_in_first=True, pending_ttl_seconds=1
    )

    async def all_abandoned() -> bool:
        rows = await _rows(system, schedule_ids)
        return all(rows[f"waiter@{s}"].status == TokenStatus.EXPIRED for s in schedule_ids)

    await eventually(all_abandoned, timeout=30)

    rows = await _rows(system, schedule_ids)
    for schedule_id in schedule_ids:
        waiter = rows[f"waiter@{schedule_id}"]
        assert waiter.activated_at is None
        assert waiter.ended_at is not None
        deadline = waiter.last_seen_at + timedelta(seconds=1)
        assert waiter.ended_at - deadline <= BOUND, f"schedule {schedule_id} abandoned late"


async def test_the_sweeper_leaves_schedules_alone_until_they_are_due(
    system: System, new_schedule_id: Callable[[], int]
) -> None:
    """A pending TTL a minute away costs nothing now (it cost a settle every tick before)."""
    schedule_ids = await _lines(
        system, new_schedule_id, holders_in_first=True, pending_ttl_seconds=60
    )
    mine = set(schedule_ids)
    settled: list[int] = []

    def record(settlement: Settlement) -> None:
        # Settles by the sweeper's own task; the consumer may still settle the issues' events.
        task = asyncio.current_task()
        if settlement.schedule_id in mine and task is not None and task.get_name() == "sweeper":
            settled.append(settlement.schedule_id)

    sweeper = system.activator.sweeper
    system.activator.admitter.watch_due(record)
    rounds_before = sweeper.rounds

    async def swept_three_times() -> bool:
        return sweeper.rounds >= rounds_before + 3

    await eventually(swept_three_times, timeout=10)

    assert settled == []
