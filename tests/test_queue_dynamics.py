"""Keeping the line moving: expiry, abandonment, rate limits, ETA, watch streams, events out."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta

import grpc
from aiokafka import ConsumerRecord

from activator.watch import WatchHub
from tests.helpers import (
    RPC_TIMEOUT,
    System,
    configure,
    eventually,
    issue,
    queue_status,
    read_topic,
    token_status,
    wait_counts,
)
from waiting.v1 import (
    events_pb2,
    queue_status_service_pb2,
    token_pb2,
    token_service_pb2,
)
from waiting_core import repository

ACTIVE = token_pb2.TOKEN_STATUS_ACTIVE
EXPIRED = token_pb2.TOKEN_STATUS_EXPIRED
PENDING = token_pb2.TOKEN_STATUS_PENDING


async def test_expiry_frees_the_slot_for_the_next_token(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1, active_ttl_seconds=1)
    first = await issue(system, "first", schedule_id)
    second = await issue(system, "second", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=1)

    async def second_admitted() -> bool:
        return (await token_status(system, second.token_id)).status == ACTIVE

    await eventually(second_admitted, timeout=10)
    assert (await token_status(system, first.token_id)).status == EXPIRED


async def test_expired_token_no_longer_validates(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=5, active_ttl_seconds=1)
    token = await issue(system, "u", schedule_id)

    async def expired() -> bool:
        return (await token_status(system, token.token_id)).status == EXPIRED

    await eventually(expired, timeout=10)
    reply = await system.tokens.ValidateToken(
        token_service_pb2.ValidateTokenRequest(token_id=token.token_id, schedule_id=schedule_id),
        timeout=RPC_TIMEOUT,
    )
    assert reply.active is False


async def test_abandoned_pending_tokens_leave_the_line(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1, pending_ttl_seconds=1)
    await issue(system, "holder", schedule_id)
    abandoned = await issue(system, "gone", schedule_id)
    kept = await issue(system, "keeps-asking", schedule_id)

    async def only_the_asker_waits() -> bool:
        status = await token_status(system, kept.token_id)  # asking keeps it alive
        return (await queue_status(system, schedule_id)).pending_count == 1 and (
            status.status == PENDING
        )

    await eventually(only_the_asker_waits, timeout=10, interval=0.3)
    gone = await token_status(system, abandoned.token_id)
    assert gone.status == EXPIRED
    assert (await token_status(system, kept.token_id)).position == 1


async def test_switching_abandonment_on_gives_the_line_a_whole_ttl(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=1)  # no pending TTL: "seen" is not recorded
    await issue(system, "holder", schedule_id)
    waiter = await issue(system, "waiter", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=1)
    database = system.token_api.database
    async with database.transaction() as session:
        token = await repository.get_token(session, waiter.token_id)
        token.last_seen_at = datetime.now(UTC) - timedelta(hours=1)

    await configure(system, schedule_id, capacity=1, pending_ttl_seconds=1)

    async with database.transaction() as session:
        schedule = await repository.lock_schedule(session, schedule_id)
        assert await repository.abandon_stale_pending(session, [schedule], datetime.now(UTC)) == []
    await wait_counts(system, schedule_id, active=1, pending=0)  # after the TTL, it goes


async def test_admit_rate_limits_new_admissions(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=100, admit_rate_per_second=2)
    started = time.monotonic()
    tokens = [await issue(system, f"u{i}", schedule_id) for i in range(6)]

    first_look = await queue_status(system, schedule_id)
    elapsed = time.monotonic() - started
    await wait_counts(system, schedule_id, active=6, pending=0)

    # A full bucket holds one second's worth (2); it refills at 2/s while we issue and look.
    assert first_look.active_count <= 2 + math.ceil(2 * elapsed)
    statuses = [await token_status(system, t.token_id) for t in tokens]
    activated = [s.activated_at.ToNanoseconds() for s in statuses]
    assert activated == sorted(activated)  # FIFO even when throttled
    assert (activated[-1] - activated[0]) / 1e9 >= 1.0


async def test_eta_is_known_after_admissions(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=2, active_ttl_seconds=600)
    tokens = [await issue(system, f"u{i}", schedule_id) for i in range(5)]
    await wait_counts(system, schedule_id, active=2, pending=3)

    reply = await system.queue.GetTokenStatus(
        queue_status_service_pb2.GetTokenStatusRequest(token_id=tokens[-1].token_id),
        timeout=RPC_TIMEOUT,
    )
    queue = await queue_status(system, schedule_id)

    assert reply.token.position == 3
    assert reply.estimate_known is True
    assert reply.estimated_wait_seconds > 0
    assert queue.estimate_known is True
    assert queue.estimated_wait_seconds >= reply.estimated_wait_seconds


async def test_a_newcomer_to_a_free_schedule_waits_nothing(
    system: System, schedule_id: int
) -> None:
    queue = await queue_status(system, schedule_id)

    assert (queue.estimate_known, queue.estimated_wait_seconds) == (True, 0)


async def test_watch_streams_the_admission(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1)
    holder = await issue(system, "holder", schedule_id)
    waiter = await issue(system, "waiter", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=1)
    stream = system.queue.WatchToken(
        queue_status_service_pb2.WatchTokenRequest(token_id=waiter.token_id), timeout=30
    )
    updates = aiter(stream)
    first = await anext(updates)
    assert first.token.status == PENDING
    assert first.token.position == 1

    await system.tokens.CompleteToken(
        token_service_pb2.CompleteTokenRequest(token_id=holder.token_id), timeout=RPC_TIMEOUT
    )

    statuses = [first.token.status]
    while statuses[-1] != ACTIVE:
        update = await anext(updates, None)
        assert update is not None, f"stream ended after {statuses}"
        statuses.append(update.token.status)
    stream.cancel()


async def test_watch_ends_when_the_token_leaves_the_line(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1)
    await issue(system, "holder", schedule_id)
    waiter = await issue(system, "waiter", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=1)
    stream = system.queue.WatchToken(
        queue_status_service_pb2.WatchTokenRequest(token_id=waiter.token_id), timeout=30
    )
    updates = aiter(stream)
    await anext(updates)

    await system.tokens.CancelToken(
        token_service_pb2.CancelTokenRequest(token_id=waiter.token_id), timeout=RPC_TIMEOUT
    )

    statuses = [update.token.status async for update in updates]
    # A position or wait refresh may still arrive before the cancellation; the stream must
    # end on CANCELLED and carry nothing else but PENDING views before it.
    assert statuses[-1] == token_pb2.TOKEN_STATUS_CANCELLED
    assert set(statuses[:-1]) <= {PENDING}
    assert await stream.code() == grpc.StatusCode.OK


async def test_many_watchers_share_one_poll(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1)
    await issue(system, "holder", schedule_id)
    waiters = [await issue(system, f"w{i}", schedule_id) for i in range(200)]
    streams = [
        system.queue.WatchToken(
            queue_status_service_pb2.WatchTokenRequest(token_id=w.token_id), timeout=30
        )
        for w in waiters
    ]
    await asyncio.gather(*(anext(aiter(s)) for s in streams))
    hub = system.activator.hub
    await eventually(lambda: _at_least(hub, 200), timeout=10)
    started, polls_before = time.monotonic(), hub.polls

    # A stalled hub fails here; a hub that polled per stream makes 200 polls a tick.
    await eventually(lambda: _polled_since(hub, polls_before, 10), timeout=10)
    ticks = (time.monotonic() - started) / hub.status_interval

    assert hub.polls - polls_before <= ticks + 2  # one poll a tick serves all 200 streams
    for stream in streams:
        stream.cancel()


async def _at_least(hub: WatchHub, streams: int) -> bool:
    return hub.watched >= streams


async def _polled_since(hub: WatchHub, polls_before: int, polls: int) -> bool:
    return hub.polls >= polls_before + polls


async def test_state_changes_are_published_to_token_events(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=1)
    first = await issue(system, "a", schedule_id)
    second = await issue(system, "b", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=1)
    await system.tokens.CompleteToken(
        token_service_pb2.CompleteTokenRequest(token_id=first.token_id), timeout=RPC_TIMEOUT
    )
    await wait_counts(system, schedule_id, active=1, pending=0)
    await system.tokens.CancelToken(
        token_service_pb2.CancelTokenRequest(token_id=second.token_id), timeout=RPC_TIMEOUT
    )

    expected = {
        (first.token_id, ACTIVE),
        (first.token_id, token_pb2.TOKEN_STATUS_COMPLETED),
        (second.token_id, ACTIVE),
        (second.token_id, token_pb2.TOKEN_STATUS_CANCELLED),
    }
    seen = await _read_state_changes(system, schedule_id, len(expected))
    assert expected <= seen


async def _read_state_changes(
    system: System, schedule_id: int, wanted: int
) -> set[tuple[str, int]]:
    def of_schedule(record: ConsumerRecord[bytes, bytes]) -> tuple[str, int] | None:
        if record.key != str(schedule_id).encode():
            return None
        event = events_pb2.TokenStateChangedEvent.FromString(record.value)
        return (event.token_id, event.to_status)

    settings = system.activator_settings
    changes = await read_topic(
        settings.events_topic,
        settings.kafka_bootstrap,
        of_schedule,
        lambda found: len(set(found)) >= wanted,  # delivery is at least once
        timeout=20,
    )
    return set(changes)
