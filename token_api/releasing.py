"""Group commit for CompleteToken and CancelToken: concurrent releases share a transaction.

Releases refill slots, so at rush rate they bound admissions. One task takes every release
that is waiting and applies them all in one plain-SQL transaction (``waiting_core.releases``:
a few statements for the whole group), with their state changes and one SlotsFreedEvent per
schedule that got a slot back while someone waits in its line in its outbox, and answers
each caller. A slot freed in a schedule nobody waits in wakes nobody: the activator has
nothing to admit there, and a token still on its way through the log is placed under the
schedule's lock after this group, where it sees the free slot. A request's own
error (an unknown id, a move the lifecycle forbids) goes to that caller alone. Under a
rush a group lingers up to GROUP_LINGER_MS for more releases (``waiting_core.grouping``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from waiting_core import metrics, repository
from waiting_core.clock import utc_now
from waiting_core.domain import TokenStatus
from waiting_core.errors import DomainError
from waiting_core.events import Topics, slots_freed_row, state_changed_rows
from waiting_core.grouping import CallGroups
from waiting_core.models import AnyToken, OutboxEvent
from waiting_core.outbox import OutboxRelay
from waiting_core.releases import ReleaseStore
from waiting_core.worker import BackgroundWorker

MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class _Request:
    token_id: str
    target: TokenStatus
    answer: asyncio.Future[AnyToken]


class ReleaseBatcher(BackgroundWorker):
    """Serialises releases into batched transactions. ``start``/``stop`` idempotent."""

    name = "release-batcher"

    def __init__(
        self,
        store: ReleaseStore,
        relay: OutboxRelay,
        topics: Topics,
        linger_seconds: float = 0.0,
    ) -> None:
        self._store = store
        self._relay = relay
        self._topics = topics
        self._calls: CallGroups[_Request] = CallGroups(linger_seconds, MAX_BATCH)
        super().__init__()

    async def release(self, token_id: str, target: TokenStatus) -> AnyToken:
        """Move the token to ``target`` (COMPLETED or CANCELLED); the token after it."""
        answer: asyncio.Future[AnyToken] = asyncio.get_running_loop().create_future()
        self._calls.put(_Request(token_id, target, answer))
        # Not shielded: a caller that goes away cancels its answer, and the group skips
        # it (the release itself is still applied). A shield cost a future and a turn of
        # the loop per call.
        return await answer

    async def _run(self) -> None:
        while True:
            batch = await self._calls.next_group()
            await asyncio.shield(self._write(batch))

    async def _write(self, batch: list[_Request]) -> None:
        now = utc_now()
        requests = [(r.token_id, r.target) for r in batch]
        try:
            results = await self._apply(batch, requests, now)
        except Exception as exc:  # noqa: BLE001 - every caller gets the failure to map
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            return
        for request, result in zip(batch, results, strict=True):
            if request.answer.done():
                continue
            if isinstance(result, DomainError):
                request.answer.set_exception(result)
            else:
                _count(result, request.target)
                request.answer.set_result(result.token)

    async def _apply(
        self, batch: list[_Request], requests: list[tuple[str, TokenStatus]], now: datetime
    ) -> Sequence[repository.Release | DomainError]:
        """One transaction for the group: the releases, their events in the outbox."""
        events_of = functools.partial(self._events, batch, now=now)
        results, events = await self._store.apply(requests, now, events_of)
        self._relay.hand_over(events)
        return results

    def _events(
        self,
        batch: Sequence[_Request],
        results: Sequence[repository.Release | DomainError],
        waiting: frozenset[int],
        now: datetime,
    ) -> list[OutboxEvent]:
        """A state change per release that changed; a freed-slot event per schedule that
        got a slot back while someone waits in it (``waiting``)."""
        events: list[OutboxEvent] = []
        freed: dict[int, str] = {}
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, DomainError) or not result.changed:
                continue
            events += state_changed_rows(
                self._topics, [result.token], result.previous, request.target, now
            )
            if result.freed_slot and result.token.schedule_id in waiting:
                freed.setdefault(result.token.schedule_id, request.target.value.lower())
        events += [
            slots_freed_row(self._topics, schedule_id, reason, now)
            for schedule_id, reason in freed.items()
        ]
        return events


def _count(release: repository.Release, target: TokenStatus) -> None:
    if release.changed:
        completed = target == TokenStatus.COMPLETED
        (metrics.TOKENS_COMPLETED if completed else metrics.TOKENS_CANCELLED).inc()
