"""Revocation of admission passes before their exp, learnt from ``token-events``.

A token that leaves ACTIVE early (COMPLETED or CANCELLED) announces it with a
``TokenStateChangedEvent`` carrying the token's ``expires_at``. ``Revocations`` reads every
partition of the topic without a consumer group, from ``lookback_seconds`` ago (at least
the longest active TTL in use), and remembers each such token id until its expiry; after
that the pass's own exp refuses it.

``start`` returns once the history up to the topic's end at that moment has been read, so a
gate never admits a pass that was revoked before it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.message import DecodeError

from waiting.v1 import events_pb2, token_pb2

log = logging.getLogger(__name__)

EVENT_TYPE = events_pb2.TokenStateChangedEvent.DESCRIPTOR.full_name.encode()
ASSIGNMENT_TIMEOUT_SECONDS = 30.0
EARLY_EXITS = frozenset({token_pb2.TOKEN_STATUS_COMPLETED, token_pb2.TOKEN_STATUS_CANCELLED})


class Revocations:
    """Token ids whose passes were given up early, each until its expiry."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "token-events",
        *,
        lookback_seconds: float = 86_400.0,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._lookback = lookback_seconds
        self._until: dict[str, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def revoked(self, token_id: str) -> bool:
        """Whether the pass of ``token_id`` was given up before its expiry (still ahead)."""
        until = self._until.get(token_id)
        return until is not None and until > time.time()

    def __len__(self) -> int:
        return len(self._until)

    async def start(self) -> None:
        """Read the topic from ``lookback_seconds`` ago up to its current end, then follow it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,  # every partition, no group: each gate reads the whole topic
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a partition (or topic) made later: from its start
            metadata_max_age_ms=5000,  # and noticed within seconds
        )
        await consumer.start()
        self._consumer = consumer
        try:
            consumer.subscribe([self._topic])
            if self._topic in await consumer.topics():
                partitions = await self._wait_for_assignment(consumer)
                await self._seek_to_lookback(consumer, partitions)
                await self._catch_up(consumer, partitions)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._follow(consumer), name="revocations")

    async def stop(self) -> None:
        """Stop following the topic."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    @staticmethod
    async def _wait_for_assignment(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        async with asyncio.timeout(ASSIGNMENT_TIMEOUT_SECONDS):
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no event
                await asyncio.sleep(0.05)
        return sorted(consumer.assignment())

    async def _seek_to_lookback(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        since = int((time.time() - self._lookback) * 1000)
        offsets = await consumer.offsets_for_times(dict.fromkeys(partitions, since))
        for partition in partitions:
            found = offsets.get(partition)
            if found is None:
                await consumer.seek_to_end(partition)  # nothing since the lookback
            else:
                consumer.seek(partition, found.offset)

    async def _catch_up(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        ends = await consumer.end_offsets(partitions)
        behind = list(partitions)
        while behind:
            self._apply(await consumer.getmany(*behind, timeout_ms=200, max_records=5000))
            behind = [p for p in behind if await consumer.position(p) < ends[p]]

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                self._apply(await consumer.getmany(timeout_ms=1000, max_records=5000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following; aiokafka reconnects
                log.warning("revocations: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1.0)
            self._forget_expired()

    def _apply(self, batches: dict[TopicPartition, list[object]]) -> None:
        for records in batches.values():
            for record in records:
                self._apply_record(record)

    def _apply_record(self, record: object) -> None:
        headers = dict(getattr(record, "headers", None) or ())
        if headers.get("event-type") != EVENT_TYPE:
            return
        event = events_pb2.TokenStateChangedEvent()
        try:
            event.ParseFromString(getattr(record, "value", None) or b"")
        except DecodeError:
            return
        left_active = event.from_status == token_pb2.TOKEN_STATUS_ACTIVE
        if left_active and event.to_status in EARLY_EXITS and event.HasField("expires_at"):
            self._until[event.token_id] = event.expires_at.ToSeconds() + 1.0

    def _forget_expired(self) -> None:
        now = time.time()
        for token_id in [t for t, until in self._until.items() if until <= now]:
            del self._until[token_id]
