"""A pre-queue draw interrupted by kill -9 of the activator process leaves nothing behind,
and completes once and correctly after a restart."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from tests.helpers import eventually, process_cluster, schedule_row
from waiting_core import prequeue, repository
from waiting_core.bulk import load_pending
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.models import TokenRow

COHORT = 150_000
CAPACITY = 10


async def _prepare(database: Database, schedule_id: int, opens_at: datetime) -> list[str]:
    """A schedule opening at ``opens_at`` with COHORT tokens issued before it."""
    async with database.transaction() as session:
        schedule = await repository.lock_schedule(session, schedule_id)
        schedule.capacity = CAPACITY
        schedule.opens_at = opens_at
        schedule.prequeue_seed = prequeue.new_seed()
        schedule.next_due_at = opens_at
        return await load_pending(session, schedule_id, COHORT, datetime.now(UTC))


async def _line(database: Database, schedule_id: int) -> list[tuple[str, TokenStatus]]:
    async with database.transaction(read_only=True) as session:
        stmt = (
            select(TokenRow.token_id, TokenRow.status)
            .where(TokenRow.schedule_id == schedule_id)
            .order_by(TokenRow.seq)
        )
        return [(row.token_id, row.status) for row in await session.execute(stmt)]


async def test_a_draw_killed_midway_completes_once_after_restart(
    fresh_database: Callable[[], str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = await asyncio.to_thread(fresh_database)
    cluster = process_cluster(url, kafka_bootstrap, tmp_path / "logs")
    schedule_id = 1 + secrets.randbelow(10**9)
    async with Database(url) as database:
        cohort = await _prepare(database, schedule_id, datetime.now(UTC) + timedelta(hours=1))
        before = await schedule_row(database, schedule_id)
        try:
            # SERVING once its consumer joined the group (and so owns the partitions).
            activator = await asyncio.to_thread(cluster.start, "activator")
            opens_at = await _open_soon(database, schedule_id)
            # At the opening the sweeper admits the first by draw key, then renumbers the
            # line: that takes longer than this for COHORT tokens, and commits at its end.
            await asyncio.sleep((opens_at - datetime.now(UTC)).total_seconds() + 0.4)
            await asyncio.to_thread(activator.kill)
            interrupted = await schedule_row(database, schedule_id)
            assert interrupted.drawn_at is None, "the draw finished before the kill: raise COHORT"
            assert interrupted.last_seq == before.last_seq  # nothing of it was kept
            assert [t for t, _ in await _line(database, schedule_id)] == cohort

            await asyncio.to_thread(cluster.start, "activator")

            async def drawn() -> bool:
                return (await schedule_row(database, schedule_id)).drawn_at is not None

            await eventually(drawn, timeout=120)
        finally:
            await asyncio.to_thread(cluster.stop_all)
        after = await schedule_row(database, schedule_id)
        line = await _line(database, schedule_id)

    # The first CAPACITY drawn were admitted at the opening; the rest renumbered once.
    assert after.last_seq == before.last_seq + COHORT - CAPACITY
    assert after.prequeue_seed is not None
    expected = prequeue.drawn_order(after.prequeue_seed, cohort)
    assert {t for t, status in line if status == TokenStatus.ACTIVE} == set(expected[:CAPACITY])
    assert [t for t, status in line if status == TokenStatus.PENDING] == expected[CAPACITY:]


async def _open_soon(database: Database, schedule_id: int) -> datetime:
    """Move the opening to a moment from now (as UpsertSchedule may, before it)."""
    opens_at = datetime.now(UTC) + timedelta(seconds=1)
    async with database.transaction() as session:
        schedule = await repository.lock_schedule(session, schedule_id)
        schedule.opens_at = opens_at
        schedule.next_due_at = opens_at
    return opens_at
