"""Two activators in one consumer group never admit beyond capacity (I1), and stay FIFO (I2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from activator.admission import Admitter
from activator.server import Activator
from tests.helpers import System, issue, queue_status, set_capacity, wait_assigned, wait_counts
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.events import Topics
from waiting_core.models import TokenRow
from waiting_core.outbox import OutboxRelay
from waiting_core.signing_keys import SigningKeys, key_config


@pytest.fixture
async def second_activator(system: System) -> AsyncIterator[Activator]:
    """Another activator instance in the same group, on the same database and topic."""
    async with Activator(system.activator_settings) as other:
        await wait_assigned(other)
        yield other


async def test_capacity_holds_with_two_activators_and_200_tokens(
    system: System, second_activator: Activator, schedule_id: int
) -> None:
    capacity = 50
    await set_capacity(system, schedule_id, capacity)
    samples: list[int] = []
    sampling = asyncio.create_task(_sample_active(system, schedule_id, samples))
    try:
        tokens = await asyncio.gather(*(issue(system, f"u{i}", schedule_id) for i in range(200)))
        await wait_counts(system, schedule_id, active=capacity, pending=200 - capacity)
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling

    assert samples, "the sampler never ran"
    assert max(samples) <= capacity
    assert system.activator.consumer.assignment().isdisjoint(second_activator.consumer.assignment())
    rows = await _rows(system, schedule_id)
    assert len(rows) == len({t.token_id for t in tokens}) == 200
    active_seqs = sorted(r.seq for r in rows if r.status == TokenStatus.ACTIVE)
    assert active_seqs == list(range(1, capacity + 1))  # FIFO: the first 50 issued


async def test_concurrent_admissions_on_one_schedule_respect_capacity(
    system: System, schedule_id: int
) -> None:
    """Many admitters racing on the same schedule: the row lock keeps I1 and I4."""
    await set_capacity(system, schedule_id, 7)
    await asyncio.gather(*(issue(system, f"u{i}", schedule_id) for i in range(30)))
    await wait_counts(system, schedule_id, active=7, pending=23)
    await set_capacity(system, schedule_id, 19)
    async with Database(system.activator_settings.database_url) as database:
        settings = system.activator_settings
        topics = Topics(
            origin="activator", waiting=settings.waiting_topic, events=settings.events_topic
        )
        relay = OutboxRelay(  # never started: the system's relay publishes what it commits
            database, settings.kafka_bootstrap, topics=topics, partitions=settings.topic_partitions
        )
        admitter = Admitter(relay, topics, SigningKeys(database, key_config(settings)))
        admitted = await asyncio.gather(*(admitter.admit(schedule_id) for _ in range(10)))

    assert sum(admitted) <= 12
    await wait_counts(system, schedule_id, active=19, pending=11)
    rows = await _rows(system, schedule_id)
    assert sorted(r.seq for r in rows if r.status == TokenStatus.ACTIVE) == list(range(1, 20))
    assert (await queue_status(system, schedule_id)).active_count == 19


async def _sample_active(system: System, schedule_id: int, samples: list[int]) -> None:
    while True:
        samples.append(len([r for r in await _rows(system, schedule_id) if r.status == "ACTIVE"]))
        await asyncio.sleep(0.01)


async def _rows(system: System, schedule_id: int) -> list[TokenRow]:
    database = system.activator.database
    async with database.transaction(read_only=True) as session:
        result = await session.execute(select(TokenRow).where(TokenRow.schedule_id == schedule_id))
        return list(result.scalars().all())
