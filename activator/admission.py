"""Settling schedules: short transactions that expire, drop the abandoned, admit, and plan
each schedule's next due moment, for up to SETTLE_BATCH schedules at a time.

Every reason to look at a schedule (a new token, a freed slot, a TTL running out, the rate
bucket refilling) ends here, so there is one code path that changes ACTIVE counts.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from activator.passes_ahead import NO_PASSES_AHEAD, PassesAhead, mint_ahead
from waiting_core import domain, metrics, prequeue, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.domain import NewToken, TokenStatus
from waiting_core.events import Topics, state_changed_rows
from waiting_core.models import AnyToken, ScheduleRow
from waiting_core.outbox import OutboxRelay, OutboxTransaction
from waiting_core.signing_keys import Signer, SigningKeys

log = logging.getLogger(__name__)

# Schedules settled in one transaction: enough to share the commit, few enough that the
# locks (on SQLite, the one write lock) are not held for long.
SETTLE_BATCH = 100
# Admissions a settle after freed slots expects before it mints their passes ahead of its
# locks (``passes_ahead``): fewer cost less to sign under the locks than the read ahead.
MINT_AHEAD_FROM = 8


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one settle transaction changed."""

    schedule_id: int
    placed: Sequence[NewToken] = field(default_factory=tuple)
    admitted: Sequence[AnyToken] = field(default_factory=tuple)
    expired: Sequence[AnyToken] = field(default_factory=tuple)
    abandoned: Sequence[AnyToken] = field(default_factory=tuple)
    # How many tokens the pre-queue's draw put in line (None: no draw in this settle).
    drawn: int | None = None
    active_count: int = 0
    pending_count: int = 0
    next_due_at: datetime | None = None

    @property
    def changed(self) -> bool:
        """Whether any token was placed in line or changed state."""
        changed = self.placed or self.admitted or self.expired or self.abandoned
        return bool(changed) or self.drawn is not None


class Admitter:
    """Settles schedules; reports each committed change to ``on_change`` listeners."""

    def __init__(
        self,
        relay: OutboxRelay,
        topics: Topics,
        keys: SigningKeys,
        on_change: Callable[[Settlement], None] | None = None,
        reads: Database | None = None,
    ) -> None:
        self._relay = relay
        self._topics = topics
        self._keys = keys
        self._reads = reads  # for the reads ahead of a settle (passes_ahead); None: none
        self._listeners: list[Callable[[Settlement], None]] = [on_change] if on_change else []
        self._due_watchers: list[Callable[[Settlement], None]] = []

    def subscribe(self, listener: Callable[[Settlement], None]) -> None:
        """Call ``listener`` after every committed settlement that changed something."""
        self._listeners.append(listener)

    def watch_due(self, watcher: Callable[[Settlement], None]) -> None:
        """Call ``watcher`` after every committed settlement, with its next due moment."""
        self._due_watchers.append(watcher)

    async def admit(self, schedule_id: int) -> int:
        """Settle the schedule; return how many tokens were admitted."""
        return len((await self.settle(schedule_id)).admitted)

    async def settle(self, schedule_id: int) -> Settlement:
        """Settle one schedule in its own transaction (see ``settle_many``)."""
        return (await self.settle_many([schedule_id]))[0]

    async def settle_many(
        self,
        schedule_ids: Iterable[int],
        newcomers: Mapping[int, Sequence[NewToken]] | None = None,
        freed: Collection[int] = (),
    ) -> list[Settlement]:
        """Settle the schedules, up to SETTLE_BATCH of them per transaction, in id order.

        Each transaction locks its schedules' rows and places the ``newcomers`` (tokens read
        from the log, each schedule's in log order) at the end of their lines, dropping any
        already placed or whose user holds a live token (I5); while a line is empty and
        has free slots, its newcomers go in ACTIVE, with their passes. Then, in one
        statement each, it expires the ACTIVE tokens past their TTL, drops the abandoned
        PENDING ones, admits the oldest PENDING tokens up to each schedule's free slots (and
        rate), mints the admitted tokens' passes, and reads the deadlines that plan each
        schedule's next due moment.

        Before a schedule's ``opens_at`` nobody is admitted. The first settle after it (of a
        shuffled line) admits by draw key and plans the next settle at once; that one
        renumbers the line (``repository.renumber_line``) in its transaction. Each step is
        marked on the locked row, so it happens once whatever runs it, and a crash midway
        leaves nothing behind.

        Running it twice, or from two activators at once, admits nobody twice and never
        exceeds capacity (I1, I4): the row locks serialise the counts and the updates, and
        only PENDING rows can become ACTIVE. Admission takes the oldest first (I2).

        For the schedules in ``freed`` (slots were freed in them), the passes of the tokens
        expected to be admitted are minted before the transaction (``passes_ahead``).
        """
        ids = sorted(set(schedule_ids))
        settlements: list[Settlement] = []
        for start in range(0, len(ids), SETTLE_BATCH):
            chunk = ids[start : start + SETTLE_BATCH]
            arriving = [t for i in chunk for t in (newcomers or {}).get(i, ())]
            ahead = await self._mint_ahead([i for i in chunk if i in freed])
            async with self._relay.transaction() as tx:
                batch = await self._settle_locked(tx, chunk, arriving, ahead)
            self._report(batch)
            settlements += batch
        return settlements

    async def _mint_ahead(self, schedule_ids: Sequence[int]) -> PassesAhead:
        """The passes of the tokens these schedules' lines would admit now, as read
        unlocked; none when that is fewer than MINT_AHEAD_FROM or no key is known yet.
        Only a saving: if it fails, the settle goes on and signs under its locks."""
        signer, reads = self._keys.cached_signer(), self._reads
        if not schedule_ids or signer is None or reads is None:
            return NO_PASSES_AHEAD
        try:
            return await _read_and_mint(reads, signer, schedule_ids)
        except Exception:
            log.warning("minting passes ahead failed; the settle signs them", exc_info=True)
            return NO_PASSES_AHEAD

    async def _settle_locked(
        self,
        tx: OutboxTransaction,
        schedule_ids: Sequence[int],
        newcomers: Sequence[NewToken],
        ahead: PassesAhead = NO_PASSES_AHEAD,
    ) -> list[Settlement]:
        session = tx.session
        schedules = await repository.lock_schedule_states(session, schedule_ids)
        now = utc_now()  # under the locks, so activation times follow admission order
        placement = await repository.place_new_tokens(
            session,
            schedules,
            newcomers,
            await self._on_arrival(session, schedules, now) if newcomers else None,
        )
        placed = _by_schedule_id(placement.placed)
        # A shuffled sale whose opening came admits its first by draw key at once; the
        # next settle renumbers its line (drawn_at). A FIFO line is in order already.
        by_draw = frozenset(s.schedule_id for s in schedules if _opening(s, now) == "admit")
        drawn = {
            schedule.schedule_id: await repository.renumber_line(session, schedule, now)
            for schedule in schedules
            if _opening(schedule, now) == "renumber"
        }
        # Only a schedule whose next due moment has come can have tokens to expire or drop.
        due = [s for s in schedules if s.next_due_at is not None and s.next_due_at <= now]
        expired = _by_schedule(await repository.expire_due_active(session, due, now))
        abandoned = _by_schedule(await repository.abandon_stale_pending(session, due, now))
        limits = {schedule: _admissions_now(schedule, now) for schedule in schedules}
        admitted_rows = await repository.admit_oldest(
            session, limits, now, lambda: self._signer(session, ahead), by_draw
        )
        admitted = _by_schedule([*placement.admitted, *admitted_rows])
        for schedule in schedules:
            _record_admissions(schedule, len(admitted[schedule.schedule_id]), now)
        deadlines = await repository.earliest_deadlines(session, schedules)
        for schedule in schedules:
            schedule.next_due_at = _next_due(schedule, deadlines[schedule.schedule_id], now)
            if schedule.schedule_id in by_draw:
                schedule.draw_started_at = now
                schedule.next_due_at = now  # the sweeper renumbers the line right away
        await repository.store_schedule_states(session, schedules)
        tx.publish(
            [
                *state_changed_rows(
                    self._topics, _all(admitted), TokenStatus.PENDING, TokenStatus.ACTIVE, now
                ),
                *state_changed_rows(
                    self._topics, _all(expired), TokenStatus.ACTIVE, TokenStatus.EXPIRED, now
                ),
                *state_changed_rows(
                    self._topics, _all(abandoned), TokenStatus.PENDING, TokenStatus.EXPIRED, now
                ),
            ]
        )
        return [
            Settlement(
                schedule.schedule_id,
                placed[schedule.schedule_id],
                admitted[schedule.schedule_id],
                expired[schedule.schedule_id],
                abandoned[schedule.schedule_id],
                drawn=drawn.get(schedule.schedule_id),
                active_count=schedule.active_count,
                pending_count=schedule.pending_count,
                next_due_at=schedule.next_due_at,
            )
            for schedule in schedules
        ]

    async def _signer(self, session: AsyncSession, ahead: PassesAhead) -> repository.PassSigner:
        return ahead.signer(await self._keys.signer(session))

    async def _on_arrival(
        self, session: AsyncSession, schedules: Sequence[ScheduleRow], now: datetime
    ) -> repository.AdmitOnArrival | None:
        """How many newcomers each schedule admits as they are placed (None: nobody)."""
        limits = {s.schedule_id: _admissions_on_arrival(s, now) for s in schedules}
        if not any(limits.values()):
            return None
        return repository.AdmitOnArrival(limits, now, await self._keys.signer(session))

    def _report(self, settlements: Sequence[Settlement]) -> None:
        """Tell the watchers and listeners about committed settlements."""
        for settlement in settlements:
            for watcher in self._due_watchers:
                watcher(settlement)
            if settlement.changed:
                for listener in self._listeners:
                    listener(settlement)


async def _read_and_mint(
    reads: Database, signer: Signer, schedule_ids: Sequence[int]
) -> PassesAhead:
    """Read the lines unlocked and mint the passes of the tokens they would admit now."""
    now = utc_now()
    async with reads.transaction(read_only=True) as session:
        schedules = await repository.read_schedule_states(session, schedule_ids)
        limits = {
            s.schedule_id: _admissions_now(s, now)
            for s in schedules
            if _opening(s, now) is None  # a draw decides who goes first
        }
        if sum(limits.values()) < MINT_AHEAD_FROM:
            return NO_PASSES_AHEAD
        tokens = await repository.oldest_pending(session, limits)
    return mint_ahead(signer, tokens, {s.schedule_id: s for s in schedules}, now)


def record_metrics(settlement: Settlement) -> None:
    """Count a committed settlement's changes in the Prometheus metrics."""
    metrics.TOKENS_ADMITTED.inc(len(settlement.admitted))
    metrics.TOKENS_EXPIRED.inc(len(settlement.expired) + len(settlement.abandoned))
    metrics.LIVE_LINES.record(
        settlement.schedule_id, settlement.pending_count, settlement.active_count
    )
    for token in settlement.admitted:
        if token.activated_at is not None:
            metrics.ISSUE_TO_ADMIT.observe((token.activated_at - token.issued_at).total_seconds())


def _opening(schedule: ScheduleRow, now: datetime) -> str | None:
    """What a sale's opening asks of this settle: "admit" the first by draw key (a
    shuffled line, once), then "renumber" the line (both kinds); None when nothing."""
    opens_at = schedule.opens_at
    if opens_at is None or opens_at > now or schedule.drawn_at is not None:
        return None
    shuffled = schedule.prequeue_order == prequeue.PrequeueOrder.SHUFFLED
    return "admit" if shuffled and schedule.draw_started_at is None else "renumber"


def _admissions_on_arrival(schedule: ScheduleRow, now: datetime) -> int:
    """How many newcomers the schedule may admit as they are placed: its free slots, if
    its line is empty and nothing else decides who goes first (a rate to spend, a sale not
    open yet or opening now); else 0, and ``admit_oldest`` admits them as usual."""
    if schedule.pending_count > 0 or schedule.admit_rate_per_second > 0:
        return 0
    if prequeue.in_prequeue(schedule.opens_at, now) or _opening(schedule, now) is not None:
        return 0
    return domain.free_slots(schedule.capacity, schedule.active_count)


def _admissions_now(schedule: ScheduleRow, now: datetime) -> int:
    if prequeue.in_prequeue(schedule.opens_at, now):
        return 0  # nobody before the sale opens
    free = domain.free_slots(schedule.capacity, schedule.active_count)
    if free == 0 or schedule.pending_count <= 0:
        return 0
    elapsed = _seconds_since(schedule.rate_checked_at, now)
    allowance = domain.rate_allowance(
        schedule.admit_rate_per_second, schedule.rate_allowance, elapsed
    )
    return domain.admissions_allowed(free, allowance)


def _next_due(
    schedule: ScheduleRow, deadlines: repository.Deadlines, now: datetime
) -> datetime | None:
    """When the settled schedule next needs settling without an event (domain.next_due)."""
    return domain.next_due(
        now,
        deadlines.earliest_expiry,
        domain.next_abandonment(
            deadlines.earliest_seen, schedule.pending_ttl_seconds, schedule.abandonment_since
        ),
        _next_rate_admission(schedule, now),
        schedule.opens_at if prequeue.in_prequeue(schedule.opens_at, now) else None,
    )


def _by_schedule(tokens: Sequence[AnyToken]) -> defaultdict[int, list[AnyToken]]:
    """Tokens grouped by schedule, each group in seq order."""
    groups: defaultdict[int, list[AnyToken]] = defaultdict(list)
    for token in sorted(tokens, key=lambda t: t.seq):
        groups[token.schedule_id].append(token)
    return groups


def _by_schedule_id(tokens: Sequence[NewToken]) -> defaultdict[int, list[NewToken]]:
    """New tokens grouped by schedule, each group in log order."""
    groups: defaultdict[int, list[NewToken]] = defaultdict(list)
    for token in tokens:
        groups[token.schedule_id].append(token)
    return groups


def _all(groups: Mapping[int, Sequence[AnyToken]]) -> list[AnyToken]:
    return [token for tokens in groups.values() for token in tokens]


def _next_rate_admission(schedule: ScheduleRow, now: datetime) -> datetime | None:
    """When the rate bucket lets the next waiting token in, if only the rate holds it back."""
    waiting = schedule.pending_count > 0
    if not waiting or domain.free_slots(schedule.capacity, schedule.active_count) == 0:
        return None
    allowance = domain.rate_allowance(
        schedule.admit_rate_per_second,
        schedule.rate_allowance,
        _seconds_since(schedule.rate_checked_at, now),
    )
    wait = domain.rate_wait_seconds(schedule.admit_rate_per_second, allowance)
    return None if wait is None else now + timedelta(seconds=wait)


def _record_admissions(schedule: ScheduleRow, admitted: int, now: datetime) -> None:
    """Spend the rate bucket and feed the moving-window rate estimate."""
    if admitted == 0:
        return
    if schedule.admit_rate_per_second > 0:
        elapsed = _seconds_since(schedule.rate_checked_at, now)
        allowance = domain.rate_allowance(
            schedule.admit_rate_per_second, schedule.rate_allowance, elapsed
        )
        schedule.rate_allowance = allowance - admitted
        schedule.rate_checked_at = now
    schedule.admit_rate_estimate = domain.updated_rate(
        schedule.admit_rate_estimate, _seconds_since(schedule.admit_rate_at, now), admitted
    )
    schedule.admit_rate_at = now
    if schedule.admit_rate_since is None:
        schedule.admit_rate_since = now


def _seconds_since(moment: datetime | None, now: datetime) -> float:
    """Seconds since ``moment``; forever when it never happened (a full bucket, no rate)."""
    return (now - moment).total_seconds() if moment is not None else math.inf
