"""The Kafka producer both writers use: idempotent, ``acks=all``, started on first use."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from waiting_core.events import Topics, ensure_topics


class LazyProducer:
    """Creates the topics and starts the producer on the first ``get``; a failed start is
    retried by the next ``get``. ``stop`` is idempotent."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        partitions: int,
        *,
        linger_ms: int = 0,
        request_timeout_ms: int = 15_000,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._partitions = partitions
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()  # producers dropped by ``reset``

    async def get(self) -> AIOKafkaProducer:
        """The started producer."""
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    self._producer = await self._start()
        return self._producer

    async def stop(self) -> None:
        """Flush and close the producer, if it was started, and wait for the ones ``reset``
        dropped to be closed: a stopped service leaves no connection behind."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        if self._closing:
            await asyncio.wait(set(self._closing))  # each is bounded by _close's timeout

    def reset(self) -> None:
        """Drop the producer after a delivery failed; the next ``get`` starts a new one.

        An idempotent producer whose batches failed (the broker was gone) can be left with a
        gap in its sequence numbers, which the broker then refuses for good
        (OutOfOrderSequenceNumber). A new producer gets a new producer id and starts clean.
        The old one is closed in the background, so the caller does not wait for it.
        """
        producer, self._producer = self._producer, None
        if producer is not None:
            task = asyncio.create_task(_close(producer))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _start(self) -> AIOKafkaProducer:
        await ensure_topics(self._bootstrap, self._topics, self._partitions)
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer


async def _close(producer: AIOKafkaProducer) -> None:
    """Stop a dropped producer; if its stop fails or takes too long (the broker is still
    away), close its connections anyway."""
    try:
        await asyncio.wait_for(producer.stop(), timeout=10)
    except Exception:  # noqa: BLE001 - a producer being dropped: only its sockets matter
        with contextlib.suppress(Exception):
            await producer.client.close()


Record = tuple[bytes, bytes, Sequence[tuple[str, bytes]]]  # key, value, headers


async def send_batched(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Record]
) -> list[asyncio.Future[object]]:
    """Send ``records`` as one batch per partition (more if one fills up); return the
    batches' delivery futures.

    ``producer.send`` costs a future, a partitioner call (pure-Python murmur2) and an
    accumulator append per record; a group of concurrent issues is sent as a few batches
    instead. Each record goes to the partition Kafka's default partitioner gives its key,
    as ``send`` would, so every producer of the topic agrees on where a schedule lives.
    """
    partitions = sorted(await producer.partitions_for(topic))
    by_partition: dict[int, list[Record]] = {}
    for record in records:
        partition = partitions[key_partition(record[0], len(partitions))]
        by_partition.setdefault(partition, []).append(record)
    deliveries: list[asyncio.Future[object]] = []
    for partition, members in by_partition.items():
        batch = producer.create_batch()
        for key, value, headers in members:
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        deliveries.append(await producer.send_batch(batch, topic, partition=partition))
    return deliveries


@functools.lru_cache(maxsize=65_536)
def key_partition(key: bytes, partitions: int) -> int:
    """The index of ``key``'s partition among ``partitions`` (sorted by id): Kafka's default
    partitioner (murmur2, as in the Java client), cached per key."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions
