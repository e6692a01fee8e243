"""The core path through the real servers and broker: issue, admit in order, release, refill."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers import (
    RPC_TIMEOUT,
    System,
    create_events,
    issue,
    queue_status,
    set_capacity,
    token_status,
    wait_counts,
)
from waiting.v1 import events_pb2, token_pb2, token_service_pb2

PENDING = token_pb2.TOKEN_STATUS_PENDING
ACTIVE = token_pb2.TOKEN_STATUS_ACTIVE


async def test_first_tokens_by_issue_order_are_admitted_up_to_capacity(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 10)
    tokens = [await issue(system, f"user-{i}", schedule_id) for i in range(25)]

    await wait_counts(system, schedule_id, active=10, pending=15)

    statuses = [await token_status(system, t.token_id) for t in tokens]
    assert [s.status for s in statuses[:10]] == [ACTIVE] * 10
    assert [s.status for s in statuses[10:]] == [PENDING] * 15
    assert [s.position for s in statuses[10:]] == list(range(1, 16))
    assert all(s.position == 0 for s in statuses[:10])
    assert all(s.HasField("activated_at") and s.HasField("expires_at") for s in statuses[:10])


async def test_a_burst_into_an_empty_line_admits_its_first_in_log_order(
    system: System, schedule_id: int
) -> None:
    # Concurrent issues reach the activator in few batches: the first of them go in ACTIVE
    # as they are placed, the rest wait, in log order either way.
    await set_capacity(system, schedule_id, 10)
    tokens = await asyncio.gather(*(issue(system, f"user-{i}", schedule_id) for i in range(25)))
    await wait_counts(system, schedule_id, active=10, pending=15)

    # one schedule, one partition: the records' order is the log's
    records = await create_events(system, {t.token_id for t in tokens})
    events = [events_pb2.CreateTokenEvent.FromString(r.value) for r in records]
    in_log_order = list(dict.fromkeys(e.token_id for e in events))
    statuses = [await token_status(system, token_id) for token_id in in_log_order]
    assert [s.status for s in statuses] == [ACTIVE] * 10 + [PENDING] * 15
    assert [s.position for s in statuses] == [0] * 10 + list(range(1, 16))
    assert all(s.admission_pass and s.HasField("expires_at") for s in statuses[:10])


async def test_issue_is_idempotent_for_a_live_token(system: System, schedule_id: int) -> None:
    first = await issue(system, "alice", schedule_id)
    again = await issue(system, "alice", schedule_id)

    assert again.token_id == first.token_id
    status = await queue_status(system, schedule_id)
    assert status.active_count + status.pending_count == 1


async def test_a_cancelled_user_gets_a_new_place_at_the_back(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 1)
    await issue(system, "first", schedule_id)
    bob = await issue(system, "bob", schedule_id)
    await system.tokens.CancelToken(
        token_service_pb2.CancelTokenRequest(token_id=bob.token_id), timeout=RPC_TIMEOUT
    )

    again = await issue(system, "bob", schedule_id)

    assert again.token_id != bob.token_id
    assert again.status == PENDING


async def test_token_ids_are_long_and_distinct(system: System, schedule_id: int) -> None:
    tokens = [await issue(system, f"u{i}", schedule_id) for i in range(50)]

    assert len({t.token_id for t in tokens}) == 50
    assert all(len(t.token_id) == 43 for t in tokens)  # 32 bytes, base64 (token_ids)


async def test_completing_an_active_token_admits_the_next_one(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 2)
    first, _, third = [await issue(system, f"u{i}", schedule_id) for i in range(3)]
    await wait_counts(system, schedule_id, active=2, pending=1)

    reply = await system.tokens.CompleteToken(
        token_service_pb2.CompleteTokenRequest(token_id=first.token_id), timeout=RPC_TIMEOUT
    )

    assert reply.token.status == token_pb2.TOKEN_STATUS_COMPLETED
    await wait_counts(system, schedule_id, active=2, pending=0)
    assert (await token_status(system, third.token_id)).status == ACTIVE


async def test_cancelling_an_active_token_admits_the_next_one(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 1)
    first, second = [await issue(system, f"u{i}", schedule_id) for i in range(2)]
    await wait_counts(system, schedule_id, active=1, pending=1)

    await system.tokens.CancelToken(
        token_service_pb2.CancelTokenRequest(token_id=first.token_id), timeout=RPC_TIMEOUT
    )

    await wait_counts(system, schedule_id, active=1, pending=0)
    assert (await token_status(system, second.token_id)).status == ACTIVE


async def test_releasing_twice_is_harmless(system: System, schedule_id: int) -> None:
    token = await issue(system, "u", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=0)
    request = token_service_pb2.CompleteTokenRequest(token_id=token.token_id)

    first = await system.tokens.CompleteToken(request, timeout=RPC_TIMEOUT)
    second = await system.tokens.CompleteToken(request, timeout=RPC_TIMEOUT)

    assert first.token.status == second.token.status == token_pb2.TOKEN_STATUS_COMPLETED
    assert (await queue_status(system, schedule_id)).active_count == 0


async def test_completing_a_pending_token_is_a_failed_precondition(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 1)
    await issue(system, "holder", schedule_id)
    waiting = await issue(system, "waiter", schedule_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.tokens.CompleteToken(
            token_service_pb2.CompleteTokenRequest(token_id=waiting.token_id),
            timeout=RPC_TIMEOUT,
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PENDING" in (caught.value.details() or "")


async def test_validate_token_is_true_only_for_its_schedule(
    system: System, schedule_id: int
) -> None:
    token = await issue(system, "u", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=0)

    right = await system.tokens.ValidateToken(
        token_service_pb2.ValidateTokenRequest(token_id=token.token_id, schedule_id=schedule_id),
        timeout=RPC_TIMEOUT,
    )
    wrong = await system.tokens.ValidateToken(
        token_service_pb2.ValidateTokenRequest(
            token_id=token.token_id, schedule_id=schedule_id + 1
        ),
        timeout=RPC_TIMEOUT,
    )

    assert right.active is True
    assert wrong.active is False


async def test_raising_capacity_admits_waiting_tokens_at_once(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 1)
    for i in range(4):
        await issue(system, f"u{i}", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=3)

    await set_capacity(system, schedule_id, 3)

    await wait_counts(system, schedule_id, active=3, pending=1)


async def test_lowering_capacity_evicts_nobody(system: System, schedule_id: int) -> None:
    await set_capacity(system, schedule_id, 3)
    for i in range(4):
        await issue(system, f"u{i}", schedule_id)
    await wait_counts(system, schedule_id, active=3, pending=1)

    await set_capacity(system, schedule_id, 1)

    status = await queue_status(system, schedule_id)
    assert (status.capacity, status.active_count, status.pending_count) == (1, 3, 1)
