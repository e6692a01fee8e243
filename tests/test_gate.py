"""TokenGate in front of a downstream service: only ACTIVE tokens of the schedule get through."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers import GUARDED, System, downstream_behind, issue, set_capacity, wait_counts
from waiting.v1 import token_service_pb2, token_service_pb2_grpc
from waiting_client import SCHEDULE_HEADER, TOKEN_HEADER, TokenGate


@pytest.fixture
async def downstream(system: System) -> AsyncIterator[token_service_pb2_grpc.TokenServiceAsyncStub]:
    async with (
        grpc.aio.insecure_channel(system.token_api_address) as waiting_room,
        downstream_behind(TokenGate(waiting_room, [GUARDED])) as stub,
    ):
        yield stub


async def _call(
    stub: token_service_pb2_grpc.TokenServiceAsyncStub, token_id: str, schedule: int
) -> grpc.StatusCode:
    metadata = ((TOKEN_HEADER, token_id), (SCHEDULE_HEADER, str(schedule)))
    try:
        await stub.GetToken(token_service_pb2.GetTokenRequest(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_the_gate_admits_only_active_tokens_of_the_schedule(
    system: System, downstream: token_service_pb2_grpc.TokenServiceAsyncStub, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 1)
    active = await issue(system, "in", schedule_id)
    waiting = await issue(system, "out", schedule_id)
    await wait_counts(system, schedule_id, active=1, pending=1)

    assert await _call(downstream, active.token_id, schedule_id) == grpc.StatusCode.OK
    assert (
        await _call(downstream, waiting.token_id, schedule_id) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await _call(downstream, active.token_id, schedule_id + 1)
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert await _call(downstream, "A" * 32, schedule_id) == grpc.StatusCode.PERMISSION_DENIED


async def test_the_gate_needs_the_headers(
    downstream: token_service_pb2_grpc.TokenServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await downstream.GetToken(token_service_pb2.GetTokenRequest(), timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN_HEADER in (caught.value.details() or "")
