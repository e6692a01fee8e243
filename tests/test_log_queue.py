"""The log is the queue: IssueToken answers once Kafka has the event; the activator places it.

Through the real servers and broker, on both databases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import grpc
import pytest
from aiokafka import AIOKafkaConsumer

from activator.server import Activator
from tests.helpers import (
    RPC_TIMEOUT,
    System,
    admin_channel,
    configure,
    issue_unplaced,
    placed,
    queue_status,
    wait_assigned,
    wait_counts,
)
from token_api.server import TokenApi
from waiting.v1 import (
    events_pb2,
    queue_status_service_pb2,
    token_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)
from waiting_core.events import EVENT_TYPE_HEADER, schedule_key
from waiting_core.outbox import SCAN_MIN_AGE
from waiting_core.producer import LazyProducer

PENDING = token_pb2.TOKEN_STATUS_PENDING
ACTIVE = token_pb2.TOKEN_STATUS_ACTIVE
OUTBOX_SCAN_AGE = SCAN_MIN_AGE.total_seconds()


async def test_a_token_just_issued_is_pending_everywhere_never_not_found(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=1, active_ttl_seconds=600)
    issued = await asyncio.gather(
        *(issue_unplaced(system, f"u{i}", schedule_id) for i in range(50))
    )
    # Straight after the answers, before the activator may have placed them: every read
    # answers, and a token not yet placed says PENDING with its position unknown.
    for token in issued:
        token_id = token.token_id
        got = await system.tokens.GetToken(
            token_service_pb2.GetTokenRequest(token_id=token_id), timeout=RPC_TIMEOUT
        )
        valid = await system.tokens.ValidateToken(
            token_service_pb2.ValidateTokenRequest(token_id=token_id, schedule_id=schedule_id),
            timeout=RPC_TIMEOUT,
        )
        status = await system.queue.GetTokenStatus(
            queue_status_service_pb2.GetTokenStatusRequest(token_id=token_id),
            timeout=RPC_TIMEOUT,
        )
        for view in (got.token, valid.token, status.token):
            assert view.token_id == token_id
            assert view.schedule_id == schedule_id
            assert view.position_known or view.status == PENDING
    assert all(t.status == PENDING and t.schedule_id == schedule_id for t in issued)
    assert all(t.user_id == f"u{i}" for i, t in enumerate(issued))
    await wait_counts(system, schedule_id, active=1, pending=49)
    positions = sorted([(await placed(system, t.token_id)).position for t in issued])
    assert positions == [0, *range(1, 50)]


async def test_a_watch_opened_before_placement_gets_the_position(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=1, active_ttl_seconds=600)
    await issue_unplaced(system, "holder", schedule_id)
    token = await issue_unplaced(system, "waiter", schedule_id)
    stream = system.queue.WatchToken(
        queue_status_service_pb2.WatchTokenRequest(token_id=token.token_id),
        timeout=RPC_TIMEOUT,
    )
    views = []
    async for reply in stream:
        views.append(reply.token)
        if reply.token.position_known:
            break
    stream.cancel()

    assert views[-1].status == PENDING
    assert views[-1].position == 1
    assert all(v.status == PENDING for v in views)


async def test_an_unknown_id_is_still_not_found(system: System) -> None:
    forged = "A" * 43
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.tokens.GetToken(
            token_service_pb2.GetTokenRequest(token_id=forged), timeout=RPC_TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_racing_reissues_on_two_token_apis_end_with_one_token_each(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=1, active_ttl_seconds=600)
    second_settings = dataclasses.replace(system.token_api_settings, port=0)
    async with (
        TokenApi(second_settings) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel,
    ):
        stubs = [system.tokens, token_service_pb2_grpc.TokenServiceStub(channel)]
        calls = [
            stubs[attempt % 2].IssueToken(
                token_service_pb2.IssueTokenRequest(user_id=f"u{user}", schedule_id=schedule_id),
                timeout=RPC_TIMEOUT,
            )
            for attempt in range(8)
            for user in range(100)
        ]
        replies = await asyncio.gather(*calls)

    ids_per_user: dict[str, set[str]] = {}
    for reply in replies:
        ids_per_user.setdefault(reply.token.user_id, set()).add(reply.token.token_id)
    assert len(ids_per_user) == 100
    assert all(len(ids) == 1 for ids in ids_per_user.values())
    await wait_counts(system, schedule_id, active=1, pending=99)


async def test_a_record_read_twice_places_its_token_once(system: System, schedule_id: int) -> None:
    await configure(system, schedule_id, capacity=1, active_ttl_seconds=600)
    first = await issue_unplaced(system, "first", schedule_id)
    token = await placed(system, first.token_id)
    event = events_pb2.CreateTokenEvent(
        token_id=token.token_id,
        user_id=token.user_id,
        schedule_id=schedule_id,
        issued_at=token.issued_at,
    )
    producer = LazyProducer(
        system.token_api_settings.kafka_bootstrap, system.token_api.topics, partitions=6
    )
    try:
        kafka = await producer.get()
        for _ in range(3):  # as a producer retry or a rebalance would deliver it again
            await kafka.send_and_wait(
                system.token_api.topics.waiting,
                event.SerializeToString(),
                key=schedule_key(schedule_id),
                headers=[(EVENT_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())],
            )
    finally:
        await producer.stop()
    later = await issue_unplaced(system, "later", schedule_id)
    await placed(system, later.token_id)

    status = await queue_status(system, schedule_id)
    assert (status.active_count, status.pending_count) == (1, 1)


async def test_two_of_each_service_publish_every_event_once(
    system: System, schedule_id: int
) -> None:
    await configure(system, schedule_id, capacity=20, active_ttl_seconds=600)
    token_settings = dataclasses.replace(system.token_api_settings, port=0)
    activator_settings = dataclasses.replace(system.activator_settings, port=0)
    async with (
        TokenApi(token_settings) as second_api,
        Activator(activator_settings) as second_activator,
        admin_channel(f"127.0.0.1:{second_api.port}") as channel,
    ):
        await wait_assigned(second_activator)
        apis = [system.tokens, token_service_pb2_grpc.TokenServiceStub(channel)]
        tokens = await asyncio.gather(
            *(
                apis[i % 2].IssueToken(
                    token_service_pb2.IssueTokenRequest(user_id=f"u{i}", schedule_id=schedule_id),
                    timeout=RPC_TIMEOUT,
                )
                for i in range(60)
            )
        )
        await wait_counts(system, schedule_id, active=20, pending=40)
        active = [
            t.token.token_id
            for t in tokens
            if (await placed(system, t.token.token_id)).status == ACTIVE
        ]
        await asyncio.gather(
            *(
                apis[i % 2].CompleteToken(
                    token_service_pb2.CompleteTokenRequest(token_id=token_id), timeout=RPC_TIMEOUT
                )
                for i, token_id in enumerate(active)
            )
        )
        await wait_counts(system, schedule_id, active=20, pending=20)
        await asyncio.sleep(2 * OUTBOX_SCAN_AGE)  # long enough for any relay's scan to repeat

    waiting = await _records_of(system, system.token_api.topics.waiting, schedule_id)
    changes = await _records_of(system, system.token_api.topics.events, schedule_id)

    creates = [e for kind, e in waiting if kind == "CreateTokenEvent"]
    assert len(creates) == 60
    assert len(changes) == 60  # 40 admitted, 20 completed
    for records in (waiting, changes):
        ids = [event_id for _, event_id in records]
        assert all(ids)
        assert len(ids) == len(set(ids))


async def _records_of(system: System, topic: str, schedule_id: int) -> list[tuple[str, str]]:
    """(event type, event_id) of every record of the schedule on ``topic``, read until quiet."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=system.token_api_settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[tuple[str, str]] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < 3.0:
            batch = await consumer.getmany(timeout_ms=300)
            if batch:
                quiet_since = time.monotonic()
            for record in (r for records in batch.values() for r in records):
                if record.key == schedule_key(schedule_id):
                    found.append(_event_id(record.headers, record.value or b""))
    finally:
        await consumer.stop()
    return found


def _event_id(headers: Sequence[tuple[str, bytes]], value: bytes) -> tuple[str, str]:
    kind = dict(headers)[EVENT_TYPE_HEADER].decode().rsplit(".", 1)[-1]
    message = getattr(events_pb2, kind)()
    message.ParseFromString(value)
    return kind, str(message.event_id)
