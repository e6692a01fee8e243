"""The token store's engine: stopping it while transactions run."""

from __future__ import annotations

import asyncio
import gc

from sqlalchemy import text

from waiting_core.database import Database


async def test_stopping_waits_for_running_transactions_and_closes_their_connections(
    database_url: str,
) -> None:
    database = Database(database_url)
    await database.start()
    all_began = asyncio.Barrier(6)

    async def a_transaction_across_the_stop() -> None:
        async with database.transaction(read_only=True) as session:
            await session.execute(text("SELECT 1"))
            await all_began.wait()
            await asyncio.sleep(0.2)
            await session.execute(text("SELECT 1"))

    running = [asyncio.create_task(a_transaction_across_the_stop()) for _ in range(5)]
    await all_began.wait()
    await database.stop()

    assert all(task.done() for task in running)
    for task in running:
        task.result()
    # A connection left to the garbage collector still open fails the test (as a
    # ResourceWarning, made an error by the project's warning filter).
    gc.collect()
