"""Group commit for IssueToken: concurrent calls share one transaction.

One writer task takes every request that is waiting, writes them all in one transaction (one
statement locks every schedule of the batch, one finds the callers' live tokens, then the
new token rows and their outbox events), commits once, and answers every caller. Requests
that arrive meanwhile form the next batch, so there is no timer and no added latency when
the service is idle, while a burst costs one commit per batch instead of one per request.
The transaction runs in the writer task, not the RPC's, so a cancelled call can never leave
half a write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from waiting_core import domain, metrics, repository
from waiting_core.clock import utc_now
from waiting_core.events import Topics, create_token_event, outbox_row
from waiting_core.models import ScheduleRow, TokenRow
from waiting_core.outbox import OutboxRelay, OutboxTransaction
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class Issued:
    """A token handed to a caller, with its position at commit time."""

    token: TokenRow
    position: int


@dataclass(frozen=True, slots=True)
class _Request:
    user_id: str
    schedule_id: int
    answer: asyncio.Future[Issued]


class IssueBatcher(BackgroundWorker):
    """Serialises IssueToken writes into batched transactions. ``start``/``stop`` idempotent."""

    name = "issue-batcher"

    def __init__(self, relay: OutboxRelay, topics: Topics) -> None:
        self._relay = relay
        self._topics = topics
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._newcomers = 0  # new tokens of the batch being written
        super().__init__()

    async def issue(self, user_id: str, schedule_id: int) -> Issued:
        """Queue the request and wait for the commit that contains it."""
        answer: asyncio.Future[Issued] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(user_id, schedule_id, answer))
        return await asyncio.shield(answer)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await asyncio.shield(self._write(batch))

    async def _write(self, batch: list[_Request]) -> None:
        self._newcomers = 0
        try:
            async with self._relay.transaction() as tx:
                results = await self._write_batch(tx, batch)
        except Exception as exc:  # noqa: BLE001 - every caller gets the failure to map
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            return
        metrics.TOKENS_ISSUED.inc(self._newcomers)
        for request, issued in zip(batch, results, strict=True):
            if not request.answer.done():
                request.answer.set_result(issued)

    async def _write_batch(self, tx: OutboxTransaction, batch: list[_Request]) -> list[Issued]:
        """Lock every schedule of the batch and find its users' live tokens, a statement
        each for the whole batch; then append the newcomers, schedule by schedule."""
        grouped: dict[int, dict[str, None]] = {}  # each schedule's users, once, in order
        for request in batch:
            grouped.setdefault(request.schedule_id, {})[request.user_id] = None
        users_by_schedule = {schedule: list(users) for schedule, users in grouped.items()}
        session = tx.session
        schedules = await repository.lock_schedules(session, list(users_by_schedule))
        now = utc_now()  # under the locks, so issue times follow the lines' order
        live = await repository.find_live_tokens(session, users_by_schedule)
        issued: dict[tuple[int, str], Issued] = {}
        for schedule in schedules:  # in id order
            users = users_by_schedule[schedule.schedule_id]
            for user_id, result in await self._issue_for_schedule(tx, schedule, users, live, now):
                issued[(schedule.schedule_id, user_id)] = result
        return [issued[(r.schedule_id, r.user_id)] for r in batch]

    async def _issue_for_schedule(
        self,
        tx: OutboxTransaction,
        schedule: ScheduleRow,
        users: Sequence[str],
        live: dict[tuple[int, str], TokenRow],
        now: datetime,
    ) -> list[tuple[str, Issued]]:
        schedule_id = schedule.schedule_id
        returning = [live[(schedule_id, u)] for u in users if (schedule_id, u) in live]
        positions = await repository.pending_positions(
            tx.session, schedule_id, schedule.head_seq, returning
        )
        newcomers = [u for u in users if (schedule_id, u) not in live]
        pending_before = schedule.pending_count
        fresh = repository.append_pending_tokens(tx.session, schedule, newcomers, now)
        mine = {token.user_id: token for token in returning}
        for token, position in zip(
            fresh, domain.tail_positions(pending_before, len(fresh)), strict=True
        ):
            mine[token.user_id] = token
            positions[token.token_id] = position
        self._announce(tx, fresh, now)
        self._newcomers += len(fresh)
        return [(u, Issued(mine[u], positions[mine[u].token_id])) for u in users]

    def _announce(self, tx: OutboxTransaction, tokens: Sequence[TokenRow], now: datetime) -> None:
        """A CreateTokenEvent per new token, in the outbox of this transaction."""
        topics = self._topics
        events = [
            outbox_row(
                topics.waiting,
                t.schedule_id,
                create_token_event(t.token_id, t.user_id, t.schedule_id, now),
                now,
                topics.origin,
            )
            for t in tokens
        ]
        tx.publish(events)
