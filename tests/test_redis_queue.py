"""The bench's Redis baseline (tools/redis_queue.py) does what issue #9 says its competitor
does: one live token per user and schedule, FIFO positions, the head admitted."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.conftest import unavailable
from tests.helpers import eventually
from tools.redis_queue import redis_queue
from waiting.v1 import token_pb2, token_service_pb2, token_service_pb2_grpc


@contextlib.asynccontextmanager
async def _queue(capacity: int) -> AsyncIterator[token_service_pb2_grpc.TokenServiceAsyncStub]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    with redis_queue(capacity) as started:
        assert started is not None
        address, _ = started
        async with grpc.aio.insecure_channel(address) as channel:
            yield token_service_pb2_grpc.TokenServiceStub(channel)


@pytest.fixture
async def queue() -> AsyncIterator[token_service_pb2_grpc.TokenServiceAsyncStub]:
    """A queue that admits nobody (capacity 0), so positions stay put."""
    async with _queue(capacity=0) as stub:
        yield stub


async def _issue(
    stub: token_service_pb2_grpc.TokenServiceAsyncStub, user: str, schedule: int = 7
) -> token_pb2.Token:
    request = token_service_pb2.IssueTokenRequest(user_id=user, schedule_id=schedule)
    return (await stub.IssueToken(request, timeout=5)).token


async def test_redis_queue_keeps_one_live_token_per_user_in_fifo_order(
    queue: token_service_pb2_grpc.TokenServiceAsyncStub,
) -> None:
    first, second = await _issue(queue, "ann"), await _issue(queue, "bob")
    again = await _issue(queue, "ann")

    assert again.token_id == first.token_id != second.token_id
    assert len(first.token_id) == 32
    assert first.status == token_pb2.TOKEN_STATUS_PENDING
    assert (first.position, second.position) == (1, 2)
    assert (await _issue(queue, "ann", schedule=8)).position == 1  # a line per schedule


async def test_redis_queue_refuses_a_request_without_user_or_schedule(
    queue: token_service_pb2_grpc.TokenServiceAsyncStub,
) -> None:
    for user, schedule in (("", 7), ("ann", 0)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _issue(queue, user, schedule)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_redis_queue_admits_the_head_of_the_line() -> None:
    async with _queue(capacity=1) as stub:
        first, second = await _issue(stub, "ann"), await _issue(stub, "bob")

        async def ann_admitted() -> bool:  # the scheduler admits every 100 ms
            return (await _issue(stub, "ann")).status == token_pb2.TOKEN_STATUS_ACTIVE

        await eventually(ann_admitted, timeout=5)
        admitted, waiting = await _issue(stub, "ann"), await _issue(stub, "bob")

    assert (admitted.token_id, admitted.status) == (first.token_id, token_pb2.TOKEN_STATUS_ACTIVE)
    assert (waiting.token_id, waiting.position) == (second.token_id, 1)
    assert waiting.status == token_pb2.TOKEN_STATUS_PENDING
