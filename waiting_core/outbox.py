"""The transactional outbox relay: publishes events written with their change, then deletes them.

Writers change the tokens and write their events in one ``async with relay.transaction() as
tx:`` block (:meth:`OutboxRelay.transaction`): ``tx.publish(rows)`` adds the rows to the
transaction, and once it has committed the relay publishes those same rows at once, without
reading them back. A timer scans the table for anything left (the broker was down, the
process restarted, a publish failed), but only for rows older than ``SCAN_MIN_AGE``: a
row that young belongs to a writer whose relay is publishing it, maybe in another process
of the same service, so N instances publish each event once in normal operation. Every
event carries an ``event_id`` for the repeats a crash may still cause.

Rows are deleted only after the broker acknowledged them (``acks=all``, idempotent producer),
so an event is never lost. Acknowledged ids are deleted in one statement every
``delete_interval`` instead of one transaction per publish; a crash before that delete sends
those events again, which consumers tolerate (at-least-once). A service with a writer of its
own for its hot writes passes ``delete_published`` so that the deletes queue on that writer
instead of contending with it for the store's write lock (``waiting_core.releases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncSession

from waiting_core import metrics, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import Unavailable
from waiting_core.events import EVENT_TYPE_HEADER, Topics
from waiting_core.models import OutboxEvent
from waiting_core.producer import LazyProducer, Record, send_batched
from waiting_core.retry import backoff
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
DeletePublished = Callable[[Sequence[int]], Awaitable[None]]
SCAN_MIN_AGE = timedelta(seconds=3)


class OutboxTransaction:
    """One database transaction of a writer, and the outbox rows it publishes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.rows: list[OutboxEvent] = []

    def publish(self, rows: Sequence[OutboxEvent]) -> None:
        """Write these events in this transaction; the relay sends them once it commits."""
        self.rows.extend(rows)

    async def write(self) -> None:
        """Insert the published rows, in one statement (not through the ORM's unit of work,
        which costs far more per row), and give each its id."""
        if not self.rows:
            return
        ids = await repository.insert_outbox_rows(self.session, self.rows)
        for row, row_id in zip(self.rows, ids, strict=True):
            row.id = row_id


class OutboxRelay(BackgroundWorker):
    """Moves outbox rows to Kafka. ``start``/``stop`` are idempotent; ``stop`` flushes."""

    name = "outbox-relay"

    def __init__(
        self,
        database: Database,
        bootstrap: str,
        *,
        topics: Topics,
        partitions: int,
        poll_interval: float = 1.0,
        linger_ms: int = 0,
        delete_interval: float = 0.1,
        delete_published: DeletePublished | None = None,
    ) -> None:
        self._database = database
        self._delete_published = delete_published or self._delete_in_session
        self._poll_interval = poll_interval
        self._delete_interval = delete_interval
        self._topics = topics
        self._wakeup = asyncio.Event()
        self._producer = LazyProducer(bootstrap, topics, partitions, linger_ms=linger_ms)
        self._handed: list[OutboxEvent] = []
        self._scan_due = True  # rows a previous run left behind
        self._last_scan: set[int] = set()  # ids the last scan sent, in case they are handed too
        self._acked: list[int] = []
        self._acked_at = 0.0  # when the oldest undeleted acknowledgement arrived
        self.published = 0
        super().__init__()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[OutboxTransaction]:
        """A write transaction whose published rows the relay sends after the commit.

        Writing the events and handing them over are one step: a transaction that fails
        hands nothing over, and one that commits cannot forget to.
        """
        async with self._database.transaction() as session:
            transaction = OutboxTransaction(session)
            yield transaction
            await transaction.write()
        self.hand_over(transaction.rows)

    def hand_over(self, rows: Sequence[OutboxEvent]) -> None:
        """Publish these just-committed rows (with their ids) soon, without reading them
        back. ``transaction`` does it for its own; a writer outside it calls it after its
        commit."""
        if rows:
            self._handed.extend(rows)
            self._wakeup.set()

    async def stop(self) -> None:
        """Publish what is left (best effort, bounded), then close the producer."""
        was_running = self._task is not None
        await super().stop()
        if was_running:
            with contextlib.suppress(Unavailable, KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(self.publish_pending(min_age=timedelta(0)), timeout=5)
        await self._producer.stop()

    async def _run(self) -> None:
        # Connect now: starting the producer on the first event made that event (an
        # operator's first capacity raise, say) about 200 ms late. A broker that is down
        # is tried again by the first publish.
        with contextlib.suppress(Exception):
            await self._producer.get()
        loop = asyncio.get_running_loop()
        failures = 0
        next_scan = loop.time()
        while True:
            next_delete = self._acked_at + self._delete_interval if self._acked else next_scan
            with contextlib.suppress(TimeoutError):
                timeout = max(0.0, min(next_scan, next_delete) - loop.time())
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            self._wakeup.clear()
            try:
                await self._publish_handed()
                if self._scan_due or loop.time() >= next_scan:
                    self._scan_due = False
                    next_scan = loop.time() + self._poll_interval
                    await self.publish_pending()
                elif len(self._acked) >= BATCH_SIZE or loop.time() >= next_delete:
                    await self._delete_acked()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any one failure
                if isinstance(exc, KafkaError):
                    self._producer.reset()
                self._handed.clear()  # still in the table: the next scan sends them
                self._scan_due = True
                failures += 1
                delay = backoff(failures, cap=10.0)
                log.warning("outbox relay: %s; retrying in %.2fs", _describe(exc), delay)
                await asyncio.sleep(delay)
                self._wakeup.set()

    async def publish_pending(self, min_age: timedelta = SCAN_MIN_AGE) -> int:
        """Publish every pending row written over ``min_age`` ago, oldest first; return how
        many were sent."""
        await self._delete_acked()  # or the scan would send them again
        self._last_scan = set()
        created_before = utc_now() - min_age
        sent = 0
        while True:
            async with self._database.transaction(read_only=True) as session:
                rows = list(
                    await repository.oldest_outbox_events(
                        session, self._topics.origin, BATCH_SIZE, created_before
                    )
                )
            metrics.OUTBOX_BACKLOG.set(len(rows))
            if not rows:
                return sent
            await self._send(rows)
            self._last_scan.update(row.id for row in rows if row.id is not None)
            await self._delete_acked()
            sent += len(rows)
            if len(rows) < BATCH_SIZE:
                return sent

    async def _publish_handed(self) -> None:
        while self._handed:
            rows, self._handed = self._handed[:BATCH_SIZE], self._handed[BATCH_SIZE:]
            await self._send([row for row in rows if row.id not in self._last_scan])

    async def _send(self, rows: Sequence[OutboxEvent]) -> None:
        """Publish and wait for every acknowledgement; the rows become due for deletion."""
        if not rows:
            return
        producer = await self._producer.get()
        by_topic: dict[str, list[Record]] = {}
        for row in rows:
            headers = [(EVENT_TYPE_HEADER, row.event_type.encode())]
            by_topic.setdefault(row.topic, []).append((row.key, row.payload, headers))
        deliveries = [
            delivery
            for topic, records in by_topic.items()
            for delivery in await send_batched(producer, topic, records)
        ]
        await asyncio.gather(*deliveries)
        if not self._acked:
            self._acked_at = asyncio.get_running_loop().time()
        self._acked.extend(row.id for row in rows if row.id is not None)
        self.published += len(rows)

    async def _delete_acked(self) -> None:
        if not self._acked:
            return
        await self._delete_published(self._acked)
        self._acked = []

    async def _delete_in_session(self, ids: Sequence[int]) -> None:
        async with self._database.transaction() as session:
            await repository.delete_outbox_events(session, ids)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
