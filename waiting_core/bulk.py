"""Bulk loading of PENDING tokens, for benchmarks and large tests (not 1M RPCs).

The rows are exactly what IssueToken writes, minus the outbox events: the sweeper admits
into free slots of a schedule with a line even without events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from waiting_core import domain, repository
from waiting_core.domain import TokenStatus
from waiting_core.models import ScheduleRow, TokenRow
from waiting_core.token_ids import random_id

CHUNK = 5000


async def load_pending(
    session: AsyncSession, schedule_id: int, count: int, now: datetime
) -> list[str]:
    """Append ``count`` PENDING tokens to the schedule's line; return their ids in order."""
    schedule = await repository.lock_schedule(session, schedule_id)
    first_seq = schedule.last_seq + 1
    token_ids = [random_id() for _ in range(count)]
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
                "draw_key": repository.draw_key_of(schedule, token_id, now),
            }
            for offset, token_id in enumerate(token_ids[start : start + CHUNK])
        ]
        await session.execute(insert(TokenRow), rows)
    schedule.last_seq += count
    schedule.pending_count += count
    return token_ids


async def load_held_lines(
    session: AsyncSession,
    schedule_ids: Sequence[int],
    expires_at: Sequence[datetime],
    now: datetime,
    *,
    pending_ttl_seconds: int = 0,
    with_waiters: bool = True,
) -> dict[int, tuple[str, str | None]]:
    """New schedules of capacity 1, each with an ACTIVE holder and, optionally, a PENDING
    waiter, as issue and settle would have left them (``next_due_at`` included).

    Returns each schedule's (holder, waiter) token ids.
    """
    tokens: dict[int, tuple[str, str | None]] = {}
    for start in range(0, len(schedule_ids), CHUNK):
        chunk = list(zip(schedule_ids, expires_at, strict=True))[start : start + CHUNK]
        schedules, rows = [], []
        for schedule_id, expiry in chunk:
            holder = random_id()
            waiter = random_id() if with_waiters else None
            tokens[schedule_id] = (holder, waiter)
            abandonment = domain.next_abandonment(now if waiter else None, pending_ttl_seconds, now)
            schedules.append(
                {
                    "schedule_id": schedule_id,
                    "capacity": 1,
                    "active_ttl_seconds": 600,
                    "pending_ttl_seconds": pending_ttl_seconds,
                    "admit_rate_per_second": 0,
                    "last_seq": 2 if waiter else 1,
                    "head_seq": 1,
                    "active_count": 1,
                    "pending_count": 1 if waiter else 0,
                    "admitted_total": 1,
                    "abandonment_since": now if domain.abandons(pending_ttl_seconds) else None,
                    "next_due_at": domain.next_due(now, expiry, abandonment),
                }
            )
            rows.append(_token(holder, schedule_id, 1, TokenStatus.ACTIVE, now, expiry))
            if waiter:
                rows.append(_token(waiter, schedule_id, 2, TokenStatus.PENDING, now, None))
        await session.execute(insert(ScheduleRow), schedules)
        await session.execute(insert(TokenRow), rows)
    return tokens


def _token(
    token_id: str,
    schedule_id: int,
    seq: int,
    status: TokenStatus,
    now: datetime,
    expires_at: datetime | None,
) -> dict[str, object]:
    return {
        "token_id": token_id,
        "user_id": f"bulk-{schedule_id}-{seq}",
        "schedule_id": schedule_id,
        "seq": seq,
        "status": status,
        "issued_at": now,
        "activated_at": now if status == TokenStatus.ACTIVE else None,
        "expires_at": expires_at,
        "last_seen_at": now,
    }
