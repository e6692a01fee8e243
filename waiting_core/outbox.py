"""The transactional outbox relay: publishes events written with their change, then deletes them.

Writers add an ``OutboxRow`` in the transaction that changes the tokens and call
:meth:`OutboxRelay.wake` after the commit (the fast path); a timer picks up anything left
(the broker was down, the process restarted). Rows are deleted only after the broker
acknowledged them (``acks=all``, idempotent producer), so an event is never lost; a crash
between the acknowledgement and the delete sends it again, which consumers tolerate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from waiting_core import metrics, repository
from waiting_core.database import Database
from waiting_core.errors import Unavailable
from waiting_core.events import EVENT_TYPE_HEADER, Topics, ensure_topics
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

BATCH_SIZE = 1000


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
    ) -> None:
        self._database = database
        self._bootstrap = bootstrap
        self._poll_interval = poll_interval
        self._linger_ms = linger_ms
        self._topics = topics
        self._partitions = partitions
        self._wakeup = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self.published = 0
        super().__init__()

    def wake(self) -> None:
        """Publish soon: a transaction with outbox rows just committed."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Publish what is left (best effort, bounded), then close the producer."""
        was_running = self._task is not None
        await super().stop()
        if was_running:
            with contextlib.suppress(Unavailable, KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(self.publish_pending(), timeout=5)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _run(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_interval)
            self._wakeup.clear()
            try:
                await self.publish_pending()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any one failure
                failures += 1
                delay = min(10.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("outbox relay: %s; retrying in %.2fs", _describe(exc), delay)
                await asyncio.sleep(delay)
                self._wakeup.set()

    async def publish_pending(self) -> int:
        """Publish every pending row, oldest first; return how many were sent."""
        sent = 0
        while True:
            async with self._database.transaction(read_only=True) as session:
                rows = list(
                    await repository.oldest_outbox_events(session, self._topics.origin, BATCH_SIZE)
                )
            metrics.OUTBOX_BACKLOG.set(len(rows) if len(rows) < BATCH_SIZE else BATCH_SIZE)
            if not rows:
                return sent
            producer = await self._connected_producer()
            deliveries = [
                await producer.send(
                    row.topic,
                    value=row.payload,
                    key=row.key,
                    headers=[(EVENT_TYPE_HEADER, row.event_type.encode())],
                )
                for row in rows
            ]
            await asyncio.gather(*deliveries)
            async with self._database.transaction() as session:
                await repository.delete_outbox_events(session, [row.id for row in rows])
            sent += len(rows)
            self.published += len(rows)
            if len(rows) < BATCH_SIZE:
                return sent

    async def _connected_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            await ensure_topics(self._bootstrap, self._topics, self._partitions)
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=self._linger_ms,
                request_timeout_ms=15_000,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
