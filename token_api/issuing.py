"""IssueToken: the log is the queue. Concurrent calls share one read and one send.

One task takes every request that is waiting and, for the whole group:

1. reads what the callers hold in their schedules in one lean statement (no ORM, no lock,
   no write: ``waiting_core.held_tokens``);
2. answers a caller who holds a live token with that token (I5);
3. derives every other caller's token id from (schedule, user, how many tokens the user had)
   with the shared secret (``waiting_core.token_ids``), so racing calls on any process get
   the same id, and appends one CreateTokenEvent per new token to ``waiting-token``;
4. answers those callers once the broker has acknowledged (``acks=all``).

The activator that owns the partition then places the tokens in line in log order, drops
duplicates and admits. One group is in flight at a time (MAX_IN_FLIGHT): while it waits
for its acknowledgement, the calls that arrive gather into the next, and under a rush the
next lingers up to GROUP_LINGER_MS for more (``waiting_core.grouping``). A call that gets no
acknowledgement within its timeout fails with UNAVAILABLE; its event may still arrive, and
a retry derives the same id, so nothing is doubled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from waiting.v1 import token_pb2
from waiting_core import metrics, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.domain import NewToken, TokenStatus
from waiting_core.errors import Unavailable
from waiting_core.events import Topics, create_token_record
from waiting_core.grouping import CallGroups
from waiting_core.held_tokens import HeldTokens
from waiting_core.identity import TokenIdSource
from waiting_core.messages import token_to_proto, unplaced_token_to_proto
from waiting_core.models import TokenRow
from waiting_core.producer import LazyProducer, send_batched
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

MAX_BATCH = 500
# Groups sent and not yet acknowledged. One: the producer keeps one request in flight per
# broker anyway, so a second group sent early only waited in its queue as a batch of its
# own, costing a request of its own (here and at the broker). Held back instead, the
# calls that arrive meanwhile join one bigger group: at c=32, 0.27-0.29 of echo's rate
# with four groups in flight, 0.37-0.41 with one, and less CPU per call in every process.
MAX_IN_FLIGHT = 1

Pair = tuple[int, str]  # (schedule_id, user_id)


@dataclass(slots=True)
class _Request:
    user_id: str
    schedule_id: int
    answer: asyncio.Future[token_pb2.Token]


@dataclass(slots=True)
class _Group:
    """One group of concurrent calls: their answers, and the new tokens to log."""

    requests: list[_Request]
    answers: dict[Pair, token_pb2.Token] = field(default_factory=dict)
    newcomers: list[NewToken] = field(default_factory=list)


class IssueBatcher(BackgroundWorker):
    """Turns IssueToken calls into grouped reads and sends. ``start``/``stop`` idempotent."""

    name = "issue-batcher"

    def __init__(
        self,
        database: Database,
        held: HeldTokens,
        ids: TokenIdSource,
        producer: LazyProducer,
        topics: Topics,
        linger_seconds: float = 0.0,
    ) -> None:
        self._database = database
        self._held = held
        self._ids = ids
        self._producer = producer
        self._topics = topics
        self._calls: CallGroups[_Request] = CallGroups(linger_seconds, MAX_BATCH)
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._acks: set[asyncio.Task[None]] = set()
        super().__init__()

    async def issue(self, user_id: str, schedule_id: int, wait_seconds: float) -> token_pb2.Token:
        """The user's live token for the schedule, or a new one once the log has it."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[token_pb2.Token] = loop.create_future()
        self._calls.put(_Request(user_id, schedule_id, answer))
        # A bare timer, not asyncio.timeout: a quarter of its CPU, on every call.
        expiry = loop.call_later(wait_seconds, _expire, answer, wait_seconds)
        try:
            return await answer
        finally:
            expiry.cancel()

    async def stop(self) -> None:
        """Stop taking groups; let the sent ones be acknowledged, then close the producer."""
        await super().stop()
        if self._acks:
            await asyncio.wait(self._acks, timeout=5)
        await self._producer.stop()

    async def _run(self) -> None:
        while True:
            await self._in_flight.acquire()
            group = _Group(await self._calls.next_group())
            metrics.ISSUE_GROUP.observe(len(group.requests))
            try:
                deliveries = await self._read_and_send(group)
            except Exception as exc:  # noqa: BLE001 - every caller gets the failure to map
                self._in_flight.release()
                _fail(group.requests, exc)
                continue
            task = asyncio.create_task(self._answer_when_acknowledged(group, deliveries))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)

    async def _read_and_send(self, group: _Group) -> list[asyncio.Future[object]]:
        """Answer the callers who hold a live token; send the new tokens' events."""
        pairs = list(dict.fromkeys((r.schedule_id, r.user_id) for r in group.requests))
        ids = await self._ids.get()
        held = await self._held.held(pairs)
        generations = {pair: held[pair].tokens for pair in pairs}
        live = await self._live_tokens([pair for pair in pairs if held[pair].live], generations)
        positions = {t.token_id: 0 for t in live.values()}
        if any(t.status == TokenStatus.PENDING for t in live.values()):  # returning waiters
            async with self._database.transaction(read_only=True) as session:
                positions = await repository.positions_in_line(session, list(live.values()))
        now = utc_now()
        for pair in pairs:
            token = live.get(pair)
            if token is not None:
                group.answers[pair] = token_to_proto(token, positions[token.token_id])
                continue
            schedule_id, user_id = pair
            token_id = ids.derive(schedule_id, user_id, generation=generations[pair])
            group.newcomers.append(NewToken(token_id, user_id, schedule_id, now))
            group.answers[pair] = unplaced_token_to_proto(token_id, schedule_id, user_id, now)
        _answer(group, returning_only=True)
        return await self._send(group.newcomers)

    async def _live_tokens(
        self, returning: list[Pair], generations: dict[Pair, int]
    ) -> dict[Pair, TokenRow]:
        """The live tokens of returning users (rare, so through the ORM). A token that ended
        since the lean read is not live: its user gets the next generation's id."""
        if not returning:
            return {}
        async with self._database.single_read() as session:
            tokens = await repository.users_tokens(session, returning)
        generations.update((pair, len(ts)) for pair, ts in tokens.items())
        return {pair: t for pair, ts in tokens.items() for t in ts if t.status.is_live}

    async def _send(self, newcomers: Sequence[NewToken]) -> list[asyncio.Future[object]]:
        if not newcomers:
            return []
        try:
            producer = await self._producer.get()
            records = [create_token_record(token) for token in newcomers]
            return await send_batched(producer, self._topics.waiting, records)
        except (KafkaError, OSError) as exc:
            self._producer.reset()
            raise _kafka_unavailable(exc) from exc

    async def _answer_when_acknowledged(
        self, group: _Group, deliveries: list[asyncio.Future[object]]
    ) -> None:
        try:
            await asyncio.gather(*deliveries)
        except (KafkaError, OSError) as exc:
            self._producer.reset()
            _fail(group.requests, _kafka_unavailable(exc))
            return
        except Exception as exc:  # noqa: BLE001 - every caller gets the failure to map
            _fail(group.requests, exc)
            return
        finally:
            self._in_flight.release()
        metrics.TOKENS_ISSUED.inc(len(group.newcomers))
        _answer(group, returning_only=False)


def _answer(group: _Group, *, returning_only: bool) -> None:
    """Answer the callers; with ``returning_only``, those whose token is already placed."""
    for request in group.requests:
        token = group.answers[(request.schedule_id, request.user_id)]
        if returning_only and not token.position_known:
            continue
        if not request.answer.done():
            request.answer.set_result(token)


def _expire(answer: asyncio.Future[token_pb2.Token], wait_seconds: float) -> None:
    if not answer.done():
        answer.set_exception(
            Unavailable(
                f"the issue was not acknowledged by Kafka within {wait_seconds:.1f}s; retry, "
                "and the same token comes back"
            )
        )


def _fail(requests: Sequence[_Request], exc: BaseException) -> None:
    for request in requests:
        if not request.answer.done():
            request.answer.set_exception(exc)


def _kafka_unavailable(exc: BaseException) -> Unavailable:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Unavailable(f"Kafka did not take the issue ({reason}); retry")
