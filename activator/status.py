"""Read models of the line: a token with its position and expected wait, and schedule counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from waiting.v1 import token_pb2
from waiting_core import domain, prequeue, repository
from waiting_core.domain import TokenStatus, WaitEstimate
from waiting_core.messages import token_to_proto
from waiting_core.models import AnyToken, ScheduleRow, TokenRow
from waiting_core.prequeue import PrequeueOrder


@dataclass(frozen=True, slots=True)
class TokenView:
    """A token as a client sees it: the message and its expected wait."""

    token: token_pb2.Token
    wait: WaitEstimate
    # While the sale has not opened: when it opens (the token waits in the pre-queue).
    opens_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueueView:
    """A schedule's line as a client sees it."""

    capacity: int
    active_count: int
    pending_count: int
    newcomer_wait: WaitEstimate
    opens_at: datetime | None = None


def current_rate(schedule: ScheduleRow | None, now: datetime) -> float:
    """The schedule's admissions per second over the moving window, as of now."""
    if schedule is None or schedule.admit_rate_at is None:
        return 0.0
    elapsed = (now - schedule.admit_rate_at).total_seconds()
    since = schedule.admit_rate_since or schedule.admit_rate_at
    return domain.corrected_rate(
        domain.decayed_rate(schedule.admit_rate_estimate, elapsed),
        (now - since).total_seconds(),
    )


def token_view(
    token: AnyToken, position: int, schedule: ScheduleRow | None, now: datetime
) -> TokenView:
    """The view of a token whose position is known. In a pre-queue, until the line is in
    its drawn order, its wait is unknown, and so is its place unless the cohort keeps
    issue order (FIFO)."""
    waiting = token.status == TokenStatus.PENDING
    if (
        waiting
        and schedule is not None
        and prequeue.awaiting_draw(schedule.opens_at, schedule.drawn_at)
    ):
        if schedule.prequeue_order != PrequeueOrder.FIFO:
            position = 0
        view = token_to_proto(token, position)
        return TokenView(view, WaitEstimate(0, False), schedule.opens_at)
    wait = (
        domain.estimate_wait(position, current_rate(schedule, now))
        if token.status == TokenStatus.PENDING
        else WaitEstimate(0, True)
    )
    return TokenView(token_to_proto(token, position), wait)


async def read_queue_view(session: AsyncSession, schedule_id: int, now: datetime) -> QueueView:
    """Counts of a schedule (from its counters, not by counting rows) and a newcomer's wait."""
    row = await repository.get_schedule(session, schedule_id)
    settings = repository.settings_of(row, schedule_id)
    active = row.active_count if row else 0
    pending = row.pending_count if row else 0
    free = domain.free_slots(settings.capacity, active)
    ahead = max(0, pending + 1 - free)
    opening = settings.opens_at if prequeue.in_prequeue(settings.opens_at, now) else None
    return QueueView(
        capacity=settings.capacity,
        active_count=active,
        pending_count=pending,
        newcomer_wait=domain.estimate_wait(ahead, current_rate(row, now))
        if opening is None
        else WaitEstimate(0, False),
        opens_at=opening,
    )


async def read_token_views(
    session: AsyncSession, tokens: Sequence[TokenRow], now: datetime
) -> dict[str, TokenView]:
    """Views of many tokens with one departed-range query per schedule, not one per token."""
    positions = await repository.positions_in_line(session, tokens)
    views: dict[str, TokenView] = {}
    for token in tokens:
        schedule = await repository.get_schedule(session, token.schedule_id)  # identity map
        views[token.token_id] = token_view(token, positions[token.token_id], schedule, now)
    return views
