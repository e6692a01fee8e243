"""The Kafka side of the activator: consume ``waiting-token``, admit, then commit offsets.

Offsets are committed only after the admission transactions of a batch committed (I3).
The log is the queue: a batch's CreateTokenEvents are placed in their schedules' lines in
log order (so FIFO holds across any number of token_api processes), duplicates dropped, and
every schedule the batch names is settled in the same transactions, up to a hundred
schedules per transaction, so a burst costs a few statements, not one per token.
Records that cannot be decoded go to the dead-letter topic with their coordinates and the
error in headers, and the partition moves on. A database outage is retried with
exponential back-off and jitter, without committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError

from activator.admission import Admitter
from activator.config import ActivatorSettings
from waiting_core import metrics
from waiting_core.domain import NewToken
from waiting_core.errors import BadEvent, Unavailable
from waiting_core.events import Topics, decode_waiting_record, ensure_topics, is_slots_freed
from waiting_core.retry import backoff

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

MAX_APPLY_ATTEMPTS = 5


class _OffsetCommits:
    """Offset commits in the background: one in flight at a time, and the offsets asked for
    meanwhile merged into the next (a partition's newest offset covers its older ones).

    Awaiting each batch's commit held the next batch back for the group coordinator's round
    trip (about 7.5 ms on this machine), and the records that arrived meanwhile waited: that
    was most of issue→ACTIVE on SQLite. A batch's records are in the store before its commit
    is asked for, as before, so a commit that fails, or never happens because the process
    dies, only makes those records be read again, which is harmless: admission is idempotent.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, int] = {}
        self._worker: asyncio.Task[None] | None = None

    def commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` after the commit in flight, if any."""
        self._pending.update(offsets)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._commit_pending(consumer))

    async def flush(self) -> None:
        """Wait until every offset asked for so far is committed (or failed to be)."""
        if self._worker is not None:
            await asyncio.wait([self._worker])  # a wait that does not cancel the commit

    async def _commit_pending(self, consumer: AIOKafkaConsumer) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # A rebalance or a broker outage: whoever owns the partitions next re-reads
                # these records, which is harmless because admission is idempotent.
                log.warning("offset commit failed (%s); the records will be read again", exc)
            except Exception:  # a consumer stopped meanwhile, say: the same harm
                log.exception("offset commit failed; the records will be read again")


class _FinishBatchOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """On revoke, wait for the batch in flight to finish and its offsets to be committed
    before giving the partitions up.

    ``joined`` is set at the first assignment (possibly of no partitions): the consumer is
    then a member of its group.
    """

    def __init__(self, batch_lock: asyncio.Lock, commits: _OffsetCommits) -> None:
        self._batch_lock = batch_lock
        self._commits = commits
        self.joined = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._batch_lock:
            await self._commits.flush()
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.joined.set()
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class _FetchWait:
    """How long the broker may hold a fetch: short while records flow, long while idle.

    aiokafka keeps one fetch per broker in flight and leaves out partitions whose records
    are not consumed yet; a record on such a partition waits for that fetch to come back.
    Under load the wait therefore bounds admission latency (FETCH_MAX_WAIT_MS, 50 ms). When
    nothing has arrived for IDLE_AFTER seconds, every partition is in the fetch, so the
    broker answers as soon as a record arrives, and a long wait (FETCH_IDLE_WAIT_MS) costs
    no latency while it saves the wake-ups of an idle activator. aiokafka reads the value
    from its fetcher for each new request; it has no public setter, hence the attribute.
    """

    IDLE_AFTER = 1.0

    def __init__(self, consumer: AIOKafkaConsumer, settings: ActivatorSettings) -> None:
        self._fetcher = getattr(consumer, "_fetcher", None)
        self._busy_ms = settings.fetch_max_wait_ms
        self._idle_ms = max(settings.fetch_idle_wait_ms, settings.fetch_max_wait_ms)
        self._last_record = 0.0

    def after(self, *, got_records: bool) -> None:
        """Tune the wait of the next fetches after a poll."""
        now = asyncio.get_running_loop().time()
        if got_records:
            self._last_record = now
        idle = now - self._last_record > self.IDLE_AFTER
        if self._fetcher is not None and hasattr(self._fetcher, "_fetch_max_wait_ms"):
            self._fetcher._fetch_max_wait_ms = self._idle_ms if idle else self._busy_ms


class _Linger:
    """Under a rush, a batch waits a moment for more records before it is applied.

    Each applied batch costs a transaction, an offset commit and a fetch: about 7 ms of
    activator CPU on SQLite, most of it fixed, and as much again of the other core's time
    under load. In a rush the fetcher hands over a few dozen records at a time, so that fixed
    cost was most of the activator's CPU, taken from token_api on a small machine. A rush is
    a batch of ``RUSH_RECORDS`` or more that came at ``RUSH_RATE`` records a second or
    faster (counted since the previous batch was taken): it waits ``seconds``
    (BATCH_LINGER_MS), and takes what arrived meanwhile. Anything else (a steady trickle,
    the first records after a quiet spell, the backlog of a slow commit at a moderate rate)
    is applied at once, so it keeps its admission latency. The rate matters: by size alone,
    at 200 issues a second a 60 ms wait and a 20 ms PostgreSQL commit made every batch 16
    records, so every batch waited, and issue->ACTIVE took 19-21 ms (p50) instead of 14-16.

    A rush of releases is counted apart: each SlotsFreedEvent stands for a whole group of
    CompleteToken/CancelToken calls, so by records it never looked like a rush, and at 2,000
    releases a second the activator settled about 200 single-record batches a second (0.3
    ms of its CPU and 0.15 ms of the broker's per release, and as many turns of the write
    lock token_api's releases need). A batch with a SlotsFreedEvent that came within
    ``FREED_RUSH_GAP`` of the previous batch waits ``FREED_LINGER`` (at most ``seconds``):
    freed slots are refilled that much later while releases keep coming, and a lone
    release still wakes the line at once. A longer wait (60 ms) saved a little more CPU but
    held the write lock longer per batch, and CompleteToken's p99 got worse.
    """

    RUSH_RECORDS = 16
    RUSH_RATE = 500.0  # records a second; the issue->ACTIVE target is stated at 200
    FREED_RUSH_GAP = 0.02
    FREED_LINGER = 0.02

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._previous = time.monotonic()
        self._wait = seconds

    def wanted(self, batch: Batch) -> bool:
        """Is this batch part of a rush, worth waiting for more?"""
        now = time.monotonic()
        since, self._previous = now - self._previous, now
        if self._seconds <= 0:
            return False
        if _size(batch) >= max(self.RUSH_RECORDS, self.RUSH_RATE * since):
            self._wait = self._seconds
            return True
        self._wait = min(self._seconds, self.FREED_LINGER)
        return since < self.FREED_RUSH_GAP and _frees_slots(batch)

    async def wait(self) -> None:
        """Let more records arrive (taken right after: the next batch's rate counts from
        here)."""
        await asyncio.sleep(self._wait)
        self._previous = time.monotonic()


def _frees_slots(batch: Batch) -> bool:
    return any(is_slots_freed(record.headers) for records in batch.values() for record in records)


def _size(batch: Batch) -> int:
    return sum(len(records) for records in batch.values())


def _extend(batch: Batch, more: Batch) -> None:
    """Add ``more`` to ``batch``; each partition's records stay in log order."""
    for tp, records in more.items():
        batch.setdefault(tp, []).extend(records)


class AdmissionConsumer:
    """Runs the consume-admit-commit loop in a task. ``start``/``stop`` are idempotent."""

    def __init__(self, settings: ActivatorSettings, admitter: Admitter, topics: Topics) -> None:
        self._settings = settings
        self._admitter = admitter
        self._topics = topics
        self._batch_lock = asyncio.Lock()
        self._commits = _OffsetCommits()
        self._rebalance_listener = _FinishBatchOnRevoke(self._batch_lock, self._commits)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def ownership(self) -> tuple[frozenset[int], int]:
        """The waiting topic's partitions this consumer owns, and how many the topic has."""
        consumer = self._consumer
        if consumer is None:
            return frozenset(), 0
        owned = frozenset(
            tp.partition for tp in consumer.assignment() if tp.topic == self._topics.waiting
        )
        return owned, len(consumer.partitions_for_topic(self._topics.waiting) or ())

    async def membership_check(self) -> str | None:
        """A readiness check: None once the consumer has joined its group."""
        if self._rebalance_listener.joined.is_set():
            return None
        return f"the consumer has not joined group {self._settings.group_id!r} yet"

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this consumer owns now."""
        consumer = self._consumer
        return frozenset(consumer.assignment()) if consumer is not None else frozenset()

    async def start(self) -> None:
        """Start consuming in the background; the broker may still be down."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="admission-consumer")

    async def stop(self) -> None:
        """Finish and commit the batch in flight, leave the group, close the producer."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._settings.shutdown_grace_seconds + 5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):  # the last commit: bounded by the grace too
            await asyncio.wait_for(self._commits.flush(), self._settings.shutdown_grace_seconds)
        await self._close_clients()

    async def __aenter__(self) -> AdmissionConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        await self._connect_with_retry()
        consumer = self._consumer
        if consumer is None:  # stopped before the broker was ever reached
            return
        fetch_wait = _FetchWait(consumer, self._settings)
        lingering = _Linger(self._settings.batch_linger_ms / 1000)
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=self._settings.max_batch)
            except KafkaError as exc:
                log.warning("fetch failed (%s); retrying", exc)
                await asyncio.sleep(self._backoff(1))
                continue
            fetch_wait.after(got_records=bool(batch))
            if batch:
                # Under the lock, lingering included: a rebalance waits until this batch is
                # applied and committed, so no other activator places these records meanwhile.
                async with self._batch_lock:
                    if lingering.wanted(batch):
                        await self._take_more(consumer, batch, lingering)
                    await self._apply_or_rewind(consumer, batch)

    async def _take_more(
        self, consumer: AIOKafkaConsumer, batch: Batch, lingering: _Linger
    ) -> None:
        """Wait a moment, then add to ``batch`` the records that arrived meanwhile."""
        await lingering.wait()
        room = max(1, self._settings.max_batch - _size(batch))
        try:
            _extend(batch, await consumer.getmany(timeout_ms=0, max_records=room))
        except KafkaError as exc:  # the batch in hand is applied; the rest comes next time
            log.warning("fetch failed (%s); applying the batch in hand", exc)

    async def _apply_or_rewind(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        """Apply and commit; on any failure, seek back so the batch is read again."""
        try:
            await self._apply_and_commit(consumer, batch)
        except Exception:
            log.exception("batch failed; it will be read again")
            for tp, records in batch.items():
                if tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            await asyncio.sleep(self._backoff(2))

    async def _connect_with_retry(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._connect()
                self.ready.set()
                return
            except (KafkaError, OSError) as exc:
                attempt += 1
                await self._close_clients()
                delay = self._backoff(attempt)
                log.warning("cannot reach Kafka (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        await ensure_topics(
            self._settings.kafka_bootstrap, self._topics, self._settings.topic_partitions
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self._settings.session_timeout_ms // 3),
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
            max_poll_records=self._settings.max_batch,
        )
        self._consumer.subscribe([self._topics.waiting], listener=self._rebalance_listener)
        await self._consumer.start()

    async def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()

    async def _apply_and_commit(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        by_schedule: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        newcomers: dict[int, list[NewToken]] = defaultdict(list)
        freed: set[int] = set()
        for records in batch.values():
            for record in records:  # in log order: a schedule's records share a partition
                try:
                    schedule_id, token = decode_waiting_record(record.headers, record.value)
                except BadEvent as exc:
                    await self._dead_letter(record, exc)
                    continue
                by_schedule[schedule_id].append(record)
                if token is not None:
                    newcomers[schedule_id].append(token)
                elif is_slots_freed(record.headers):
                    freed.add(schedule_id)
        await self._settle_batch(by_schedule, newcomers, freed)
        metrics.CONSUMER_BATCH.observe(_size(batch))
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        for tp, next_offset in offsets.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.partition).set(max(0, highwater - next_offset))
        self._commits.commit(consumer, offsets)

    async def _settle_batch(
        self,
        by_schedule: dict[int, list[ConsumerRecord[bytes, bytes]]],
        newcomers: dict[int, list[NewToken]],
        freed: set[int],
    ) -> None:
        """Settle every schedule the batch names, sharing transactions; retry while the
        database is unavailable. Any other failure falls back to one schedule at a time, so
        that only the records of a schedule that cannot be settled are dead-lettered."""
        attempt = 0
        while True:
            try:
                await self._admitter.settle_many(by_schedule, newcomers, freed)
                return
            except Unavailable as exc:
                attempt += 1
                log.warning(
                    "settling %d schedules: %s (attempt %d)", len(by_schedule), exc, attempt
                )
                await asyncio.sleep(self._backoff(attempt))
            except Exception:
                log.exception("settling %d schedules failed; one at a time", len(by_schedule))
                for schedule_id, records in sorted(by_schedule.items()):
                    await self._admit_with_retry(
                        schedule_id, records, newcomers.get(schedule_id, [])
                    )
                return

    async def _admit_with_retry(
        self,
        schedule_id: int,
        records: list[ConsumerRecord[bytes, bytes]],
        newcomers: list[NewToken],
    ) -> None:
        attempt = 0
        while True:
            try:
                await self._admitter.settle_many([schedule_id], {schedule_id: newcomers})
                return
            except Unavailable as exc:
                attempt += 1
                log.warning("admission of schedule %d: %s (attempt %d)", schedule_id, exc, attempt)
            except Exception as exc:
                attempt += 1
                log.exception("admission of schedule %d failed (attempt %d)", schedule_id, attempt)
                if attempt >= MAX_APPLY_ATTEMPTS:
                    for record in records:
                        await self._dead_letter(record, exc)
                    return
            await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, cap=self._settings.retry_max_seconds)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        producer = self._producer
        assert producer is not None  # noqa: S101 - connected before consuming
        headers = [
            *(record.headers or ()),
            ("dlt-original-topic", record.topic.encode()),
            ("dlt-original-partition", str(record.partition).encode()),
            ("dlt-original-offset", str(record.offset).encode()),
            ("dlt-error", f"{type(exc).__name__}: {exc}".encode()),
        ]
        await producer.send_and_wait(
            self._topics.dead_letter, value=record.value, key=record.key, headers=headers
        )
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
        )
