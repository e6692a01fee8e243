"""Bulk loading of PENDING tokens, for benchmarks and large tests (not 1M RPCs).

The rows are exactly what IssueToken writes, minus the outbox events: the sweeper admits
into free slots of a schedule with a line even without events.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from waiting_core import domain, repository
from waiting_core.domain import TokenStatus
from waiting_core.models import TokenRow

CHUNK = 5000


async def load_pending(
    session: AsyncSession, schedule_id: int, count: int, now: datetime
) -> list[str]:
    """Append ``count`` PENDING tokens to the schedule's line; return their ids in order."""
    schedule = await repository.lock_schedule(session, schedule_id)
    first_seq = schedule.last_seq + 1
    token_ids = [domain.new_token_id() for _ in range(count)]
    for start in range(0, count, CHUNK):
        rows = [
            {
                "token_id": token_id,
                "user_id": f"bulk-{first_seq + start + offset}",
                "schedule_id": schedule_id,
                "seq": first_seq + start + offset,
                "status": TokenStatus.PENDING,
                "issued_at": now,
                "last_seen_at": now,
            }
            for offset, token_id in enumerate(token_ids[start : start + CHUNK])
        ]
        await session.execute(insert(TokenRow), rows)
    schedule.last_seq += count
    schedule.pending_count += count
    return token_ids
